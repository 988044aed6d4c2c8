"""What a run report shows, computed in one pass over a run's events.

Every number drawn comes from the record: a curve's points are the events' fields, the
min/max/last table is computed over every point (never the thinned ones drawn), and each
anomaly keeps its own marker. Two x axes are kept for every point:

- ``t``: seconds since the run's first event (runs overlaid by wall time align at their starts);
- ``p``: training progress in batches: an env's epoch ``e`` of batch ``b`` is ``b + e/max_epochs``
  and whatever a batch ends with (its PPO update, its snapshots) is ``b + 1``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from esper.karn.report.charts import PPO_FIELDS
from esper.karn.report.views import (
    Band,
    Marker,
    RunView,
    SeedLife,
    Series,
    StageSpan,
    Verdict,
    num,
)
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.record.replay import rank_reports, run_status

ET = TelemetryEventType


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


class _Builder:
    """One run's events in time order -> a RunView (see ``build_run``)."""

    def __init__(self, index: int, events: Sequence[TelemetryEvent]) -> None:
        self.index = index
        self.events = events
        self.t0 = events[0].timestamp_ns
        self.series: dict[tuple[str, str], Series] = {}
        self.markers: list[Marker] = []
        self.bands: list[Band] = []
        self.seeds: dict[tuple[int | None, str], SeedLife] = {}
        self.lives: list[SeedLife] = []
        self.lanes: dict[str, tuple[int, int, int]] = {}
        self.batch: dict[int | None, int] = {}
        """Each process's batch in progress (from its aggregate EPOCH_COMPLETED)."""
        self.between: dict[int | None, bool] = {}
        """A process between episodes (its last epoch done, the next not begun)."""
        self.max_epochs = 1
        self.slot_order: list[str] = []
        self.slot_series: dict[str, set[str]] = {}
        """env label -> the seed-gradient series of its slots so far."""
        self.escalations: dict[tuple[int | None, Any], tuple[TelemetryEvent, float, float]] = {}
        self.rewards: dict[tuple[int, str], list[float]] = {}
        self.reward_at: dict[int, tuple[float, float]] = {}
        self.epochs_by_rank: dict[tuple[int, int], dict[int, float]] = {}
        self.epoch_at: dict[tuple[int, int], tuple[float, float]] = {}
        self.warnings: list[tuple[str, str, str]] = []
        self.backends: list[dict[str, Any]] = []

    # -- axes -----------------------------------------------------------------------------

    def t(self, e: TelemetryEvent) -> float:
        return (e.timestamp_ns - self.t0) / 1e9

    def p_epoch(self, e: TelemetryEvent, epoch: Any) -> float:
        """Progress of an event at ``epoch`` of its process's episode. Between an episode's
        last epoch and the next episode's first (the PPO update), an event belongs to the end
        of the finished batch; one at an earlier epoch has begun the next."""
        batch = self.batch.get(e.rank, 0)
        if self.between.get(e.rank):
            if epoch is None or int(epoch) >= self.max_epochs:
                return float(batch)
            self.between[e.rank] = False
        if epoch is None:
            return float(batch + 1)
        return batch + int(epoch) / self.max_epochs

    @staticmethod
    def p_batch(batch: Any) -> float:
        return float(int(batch) + 1)

    def add(self, chart: str, label: str, t: float, p: float, y: Any) -> None:
        key = (chart, label)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series(chart, label, self.index)
        s.add(t, p, y)

    def env_label(self, e: TelemetryEvent, env: Any) -> str:
        return f"env {env}"

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> None:
        handlers = {
            ET.TRAINING_STARTED: self.on_started,
            ET.EPOCH_COMPLETED: self.on_epoch,
            ET.BATCH_EPOCH_COMPLETED: self.on_batch,
            ET.PPO_UPDATE_COMPLETED: self.on_ppo,
            ET.ANALYTICS_SNAPSHOT: self.on_snapshot,
            ET.GRADIENT_ANOMALY: self.on_anomaly,
            ET.GOVERNOR_ROLLBACK: self.on_rollback,
            ET.TELEMETRY_LEVEL_CHANGED: self.on_level,
            ET.TELEMETRY_WARNING: self.on_warning,
            ET.TELEMETRY_CLOSED: self.on_closed,
            ET.SEED_GERMINATED: self.on_germinated,
            ET.SEED_STAGE_CHANGED: self.on_stage,
            ET.SEED_GATE_EVALUATED: self.on_gate,
            ET.SEED_FOSSILIZED: self.on_seed_end,
            ET.SEED_CULLED: self.on_seed_end,
        }
        for e in self.events:
            handler = handlers.get(e.event_type)
            if handler is not None:
                handler(e)

    def on_started(self, e: TelemetryEvent) -> None:
        self.max_epochs = max(1, int(e.data.get("max_epochs") or 1))
        self.slot_order = [str(s) for s in e.data.get("slot_ids") or []]

    def on_epoch(self, e: TelemetryEvent) -> None:
        d = e.data
        t = self.t(e)
        if d.get("scope") == "aggregate":
            # Every process writes one per epoch, with its batch: the batch in progress comes
            # from here (only rank 0 writes BATCH_EPOCH_COMPLETED in a multi-rank run).
            batch = int(d.get("batch", self.batch.get(e.rank, 0)))
            self.batch[e.rank] = batch
            inner = int(d.get("inner_epoch") or 0)
            self.between[e.rank] = False
            p = batch + inner / self.max_epochs
            if e.rank is not None and d.get("epoch_seconds") is not None:
                self.add("rank_epoch_seconds", f"rank {e.rank}", t, p, d["epoch_seconds"])
                key = (batch, inner)
                self.epochs_by_rank.setdefault(key, {})[e.rank] = num(d["epoch_seconds"])
                self.epoch_at[key] = max(self.epoch_at.get(key, (t, p)), (t, p))
            if inner >= self.max_epochs:  # the episode ends: the next epoch is the next batch's
                self.end_episode(e.rank, t, p)
                self.batch[e.rank] = batch + 1
                self.between[e.rank] = True
            return
        p = self.p_epoch(e, d.get("inner_epoch"))
        label = self.env_label(e, d.get("env_id"))
        self.add("val_accuracy", label, t, p, d.get("val_accuracy"))
        self.add("val_loss", label, t, p, d.get("val_loss"))
        self.add("train_loss", label, t, p, d.get("train_loss"))
        self.add("host_grad_norm", label, t, p, d.get("host_grad_norm"))
        present = set()
        for slot, seed in (d.get("seeds") or {}).items():
            if isinstance(seed, dict) and "gradient_norm" in seed:
                present.add(f"{label} {slot}")
                self.add("seed_grad_norm", f"{label} {slot}", t, p, seed["gradient_norm"])
        for name in self.slot_series.get(label, set()) - present:
            self.series[("seed_grad_norm", name)].add_gap(t, p)
        self.slot_series.setdefault(label, set()).update(present)

    def on_batch(self, e: TelemetryEvent) -> None:
        d = e.data
        batch = int(d.get("batch_idx", 0))
        t, p = self.t(e), self.p_batch(batch)
        self.add("batch_accuracy", "mean over envs", t, p, d.get("avg_accuracy"))
        self.add("batch_accuracy", "rolling", t, p, d.get("rolling_accuracy"))
        self.add("batch_reward", "mean episode reward", t, p, d.get("avg_reward"))
        self.end_episode(e.rank, t, p)  # already done at the episode's last epoch, as a rule
        self.batch[e.rank] = max(self.batch.get(e.rank, 0), batch + 1)

    def end_episode(self, rank: int | None, t: float, p: float) -> None:
        """A process's episode ended: the seeds still alive in its envs end with it (the envs
        start their next episode afresh)."""
        for key in [k for k in self.seeds if k[0] == rank]:
            life = self.seeds.pop(key)
            self._close_stage(life, t, p)
            life.outcome = "episode_end"

    def on_ppo(self, e: TelemetryEvent) -> None:
        d = e.data
        t, p = self.t(e), self.p_batch(d.get("batch", self.batch.get(e.rank, 0)))
        for chart, names in PPO_FIELDS.items():
            for name in names:
                if name in d:
                    self.add(chart, name, t, p, d[name])
        self.add("ppo_entropy", "total", t, p, d.get("entropy"))
        self.add("ppo_grad_norm", "total", t, p, d.get("grad_norm"))
        for key, value in d.items():
            if key.startswith("head_") and key.endswith("_entropy"):
                self.add("ppo_entropy", key[5:-8], t, p, value)
            elif key.startswith("head_") and key.endswith("_grad_norm"):
                self.add("ppo_grad_norm", key[5:-10], t, p, value)

    def on_snapshot(self, e: TelemetryEvent) -> None:
        d = e.data
        kind = d.get("kind")
        t = self.t(e)
        batch = d.get("batch_idx")
        p = self.p_batch(batch) if batch is not None else self.p_epoch(e, e.epoch)
        if kind == "throughput":
            label = self.env_label(e, d.get("env_id"))
            self.add("step_time", label, t, p, d.get("step_time_ms"))
            self.add("fps", label, t, p, d.get("fps"))
            self.add("dataloader_wait", label, t, p, d.get("dataloader_wait_ms"))
        elif kind == "reward_summary" and batch is not None:
            for name, value in (d.get("summary") or {}).items():
                self.rewards.setdefault((int(batch), str(name)), []).append(num(value))
            self.reward_at[int(batch)] = (t, p)
        elif kind == "action_distribution":
            for op, n in (d.get("action_counts") or {}).items():
                self.add("actions", str(op), t, p, n)
        elif kind == "mask_hit_rates":
            totals = d.get("mask_total") or {}
            for head, hits in (d.get("mask_hits") or {}).items():
                total = num(totals.get(head))
                self.add("mask_hits", str(head), t, p, num(hits) / total if total else math.nan)
        elif kind == "collectives":
            rank = d.get("rank", e.rank)
            self.add("collective_wait", f"rank {rank}", t, p, d.get("wait_seconds_total"))

    # -- what went wrong ------------------------------------------------------------------

    def mark(self, e: TelemetryEvent, kind: str, what: str, value: Any, threshold: Any) -> None:
        env = e.data.get("env_id")
        p = self.p_epoch(e, e.epoch)
        self.markers.append(
            Marker(
                run=self.index,
                kind=kind,
                what=what,
                t=self.t(e),
                p=p,
                ns=e.timestamp_ns,
                time=_iso(e.timestamp_ns),
                rank=e.rank,
                env=None if env is None else int(env),
                epoch=e.epoch,
                batch=max(0, math.ceil(p - 1e-9) - 1),  # the batch whose epoch it is
                value=None if value is None else num(value),
                threshold=None if threshold is None else num(threshold),
                event_id=e.event_id,
            )
        )

    def on_anomaly(self, e: TelemetryEvent) -> None:
        d = e.data
        kind = "loss_spike" if d.get("kind") == "loss_spike" else "gradient_anomaly"
        what = f"{d.get('scope')} {d.get('kind')}"
        if d.get("slot_id"):
            what += f" (slot {d['slot_id']})"
        self.mark(e, kind, what, d.get("value"), d.get("threshold"))

    def on_rollback(self, e: TelemetryEvent) -> None:
        d = e.data
        what = f"rollback on {d.get('reason')}, {d.get('seeds_culled', 0)} seed(s) culled"
        self.mark(e, "rollback", what, d.get("loss_at_panic"), d.get("loss_threshold"))

    def on_level(self, e: TelemetryEvent) -> None:
        d = e.data
        key = (e.rank, d.get("env_id"))
        if d.get("to_level") == "debug":
            self.escalations[key] = (e, self.t(e), self.p_epoch(e, e.epoch))
            return
        opened = self.escalations.pop(key, None)
        if opened is not None:
            self.bands.append(self.escalation_band(opened, self.t(e), self.p_epoch(e, e.epoch)))

    def escalation_band(
        self,
        opened: tuple[TelemetryEvent, float, float],
        t1: float,
        p1: float,
        *,
        open_end: bool = False,
    ) -> Band:
        start, t0, p0 = opened
        env = start.data.get("env_id")
        who = "every env" if env is None else f"env {env}"
        rank = "" if start.rank is None else f"rank {start.rank} "
        reason = start.data.get("reason", "")
        return Band(self.index, "escalation", f"{rank}{who} at debug ({reason})", t0, t1, p0, p1,
                    open_end)  # fmt: skip

    def on_warning(self, e: TelemetryEvent) -> None:
        d = e.data
        self.warnings.append((_iso(e.timestamp_ns), str(d.get("reason", "")),
                              str(d.get("detail", e.message))))  # fmt: skip

    def on_closed(self, e: TelemetryEvent) -> None:
        """The telemetry's account (one per process): each backend's counts, as numbers."""
        d = e.data
        names = [*d.get("delivered", {}), *(n for n in d.get("dropped", {}) if n != "hub")]
        rank = "" if e.rank is None else f"rank {e.rank}: "
        hub_dropped = (d.get("dropped") or {}).get("hub", 0)
        self.backends.append({"name": f"{rank}hub", "emitted": d.get("emitted"),
                              "dropped": hub_dropped})  # fmt: skip
        for name in dict.fromkeys(names):
            self.backends.append({
                "name": f"{rank}{name}",
                "delivered": (d.get("delivered") or {}).get(name),
                "dropped": (d.get("dropped") or {}).get(name),
                "failed": (d.get("failed") or {}).get(name),
                "lost": (d.get("lost") or {}).get(name),
            })  # fmt: skip

    # -- seeds ----------------------------------------------------------------------------

    def lane(self, e: TelemetryEvent) -> str:
        d = e.data
        env, slot = d.get("env_id"), str(d.get("slot_id") or e.slot_id)
        rank = "" if e.rank is None else f"rank {e.rank} "
        name = f"{rank}env {env} {slot}"
        if name not in self.lanes:
            order = self.slot_order.index(slot) if slot in self.slot_order else len(self.slot_order)
            self.lanes[name] = (e.rank or 0, int(env or 0), order)
        return name

    def on_germinated(self, e: TelemetryEvent) -> None:
        d = e.data
        seed_id = str(d.get("seed_id") or e.seed_id)
        life = SeedLife(self.index, self.lane(e), seed_id, str(d.get("blueprint_id", "")))
        life.stages.append(StageSpan("GERMINATED", self.t(e), self.p_epoch(e, e.epoch),
                                     alpha=_opt(d.get("alpha"))))  # fmt: skip
        self.seeds[(e.rank, seed_id)] = life
        self.lives.append(life)

    def _life(self, e: TelemetryEvent) -> SeedLife | None:
        return self.seeds.get((e.rank, str(e.data.get("seed_id") or e.seed_id)))

    def _close_stage(self, life: SeedLife, t: float, p: float) -> None:
        if life.stages:
            life.stages[-1].t1, life.stages[-1].p1 = t, p

    def on_stage(self, e: TelemetryEvent) -> None:
        life = self._life(e)
        if life is None:
            return
        t, p = self.t(e), self.p_epoch(e, e.epoch)
        self._close_stage(life, t, p)
        life.stages.append(StageSpan(str(e.data.get("to_stage")), t, p,
                                     alpha=_opt(e.data.get("alpha"))))  # fmt: skip

    def on_gate(self, e: TelemetryEvent) -> None:
        life = self._life(e)
        if life is None or not life.stages:
            return
        d = e.data
        verdict = "passed" if d.get("passed") else "failed"
        checks = [*(f"+{c}" for c in d.get("checks_passed") or []),
                  *(f"-{c}" for c in d.get("checks_failed") or [])]  # fmt: skip
        line = f"{d.get('gate')} -> {d.get('target_stage')}: {verdict}"
        if checks:
            line += f" ({', '.join(checks)})"
        life.stages[-1].gates.append(f"epoch {e.epoch}: {line}")

    def on_seed_end(self, e: TelemetryEvent) -> None:
        life = self.seeds.pop((e.rank, str(e.data.get("seed_id") or e.seed_id)), None)
        if life is None:
            return
        self._close_stage(life, self.t(e), self.p_epoch(e, e.epoch))
        d = e.data
        life.improvement = _opt(d.get("improvement"))
        if e.event_type is ET.SEED_FOSSILIZED:
            life.outcome = "fossilized"
        else:
            life.outcome = "culled"
            life.reason = str(d.get("reason", ""))
            if life.reason == "blend_regression":
                what = f"seed {life.seed_id} in {d.get('slot_id')} culled for a blend regression"
                self.mark(e, "regression_cull", what, d.get("blending_delta"), None)

    # -- the end --------------------------------------------------------------------------

    def finish(self) -> tuple[float, float]:
        last = self.events[-1]
        last_t = self.t(last)
        last_p = max([s.p[-1] for s in self.series.values() if s.p] + [0.0])
        for life in self.seeds.values():  # still alive when the record ends
            self._close_stage(life, last_t, last_p)
        for opened in self.escalations.values():
            self.bands.append(self.escalation_band(opened, last_t, last_p, open_end=True))
        for (batch, name), values in sorted(self.rewards.items()):
            t, p = self.reward_at[batch]
            self.add("reward_components", name, t, p, statistics.fmean(values))
        if len({r for _, ranks in self.epochs_by_rank.items() for r in ranks}) > 1:
            for key in sorted(self.epochs_by_rank):
                values = list(self.epochs_by_rank[key].values())
                t, p = self.epoch_at[key]
                self.add("straggler", "slowest rank", t, p, max(values))
                self.add("straggler", "median", t, p, statistics.median(values))
        return last_t, last_p


def _opt(v: Any) -> float | None:
    return None if v is None else num(v)


def build_run(
    index: int,
    events: Sequence[TelemetryEvent],
    *,
    files: dict[str, int] | None = None,
    problems: Iterable[str] = (),
) -> RunView:
    """Everything the report shows of one run's events (in time order, at least one)."""
    b = _Builder(index, events)
    b.run()
    last_t, last_p = b.finish()
    started_events = [e for e in events if e.event_type is ET.TRAINING_STARTED]
    completed = [e for e in events if e.event_type is ET.TRAINING_COMPLETED]
    started = dict(started_events[0].data) if started_events else {}
    ranks = rank_reports(events)
    nodes = sorted({str(e.data.get("node")) for e in started_events if e.data.get("node")})
    lanes = sorted(b.lanes, key=b.lanes.__getitem__)
    return RunView(
        index=index,
        run_id=str(events[0].run_id or started.get("run_id") or "(no run id)"),
        status=run_status(events),
        ranks=ranks,
        started=started,
        completed=dict(completed[-1].data) if completed else None,
        start=_iso(events[0].timestamp_ns),
        end=_iso(events[-1].timestamp_ns),
        duration=last_t,
        nodes=nodes,
        world_size=int(started.get("world_size") or 1),
        max_epochs=b.max_epochs,
        series=[s for s in b.series.values() if s.y],
        markers=b.markers,
        bands=b.bands,
        seeds=b.lives,
        lanes=lanes,
        verdict=Verdict(len(events), dict(files or {}), list(problems), b.warnings, b.backends),
        last_t=last_t,
        last_p=last_p,
    )
