"""The one mapping from telemetry events to Prometheus samples.

``MetricMapping`` registers every family of the metric catalogue
(``esper.nissa.prometheus.catalogue.METRICS``) that is fed by events on a ``CollectorRegistry`` of
its own and applies events to it: the one-field metrics from their ``MetricSpec.update`` with no
code here, the rest (seed maps, stage counts, mask ratios, episodes) in the handlers below. The
live exporter (``esper.nissa.prometheus.PrometheusOutput``) serves that registry on ``/metrics``;
backfill (``esper.nissa.prometheus.backfill``) replays a recorded run through the same mapping
and writes a sample for every series an event changed, so a metric cannot mean one thing live
and another afterwards.

Labelled children are bound once and cached, since ``.labels(...)`` costs about a microsecond
a call. Counters whose label values are known in advance (anomaly scopes and kinds, heads,
stages, the ops of a multi-rank run's collectives) start at zero, so ``increase()`` sees their
first step. Labels are bounded: env, slot, head, stage, blueprint, op and reason; never a seed
or event id. Families read at scrape time (hub drop counts, CUDA memory) are not here: they
cannot be known from the record.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from esper.leyline import (
    ACTION_HEADS,
    COLLECTIVE_OPS,
    DISCRIMINATORS,
    Op,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
    allowed_values,
)
from esper.nissa.prometheus.catalogue import (
    CUDA_STATS,
    FOLD_STATS,
    HUB_STATS,
    METRICS,
    Derived,
    Fold,
    MetricDetail,
    MetricKind,
    MetricSpec,
    Update,
    derived,
    fold_of,
    served_help,
    served_labels,
)

ET = TelemetryEventType
_ANOMALY_SCOPES = allowed_values(TelemetryEventType.GRADIENT_ANOMALY, "scope")
_ANOMALY_KINDS = allowed_values(TelemetryEventType.GRADIENT_ANOMALY, "kind")
_INACTIVE = frozenset({"DORMANT"})

SeriesKey = tuple[str, tuple[str, ...]]
"""(metric name in the catalogue, label values in the order of the family's served labels,
``served_labels``): one series (one labelled child; a histogram's child is its buckets, sum
and count). At env detail the served labels are the catalogue's."""


def read_at_scrape(spec: MetricSpec) -> bool:
    """Whether a family is read when scraped rather than fed by events."""
    return spec.source.startswith((CUDA_STATS, HUB_STATS))


def event_fed() -> tuple[MetricSpec, ...]:
    """The families the mapping feeds from events: the catalogue's, less those read at
    scrape time."""
    return tuple(s for s in METRICS if not read_at_scrape(s))


class MetricMapping:
    """Applies telemetry events to the event-fed families on ``registry`` (see the module
    docstring). Not thread-safe: the caller serialises ``apply``.

    ``multi_rank``: this process is one rank of several, so its collective series exist
    (empty) from the start; ``rate()`` then has a sample from before the first collective
    even in a run that trains for less than two scrape intervals.

    ``detail``: at ``MetricDetail.RANK`` the families labelled ``env_id`` are served folded
    over the envs (``esper.nissa.prometheus.catalogue.Fold``); the handlers below write per env
    all the same, and ``_child`` hands them a writer that folds. A folded gauge keeps each
    env's value as it is written and computes the fold in ``fold()``, once per group however
    many envs wrote: the exposition calls it before each render, backfill after each event.

    ``changed`` and ``removed``, when set to sets, collect the series each ``apply`` wrote
    to or removed (backfill reads them after every event).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        multi_rank: bool = False,
        detail: MetricDetail = MetricDetail.ENV,
    ) -> None:
        self.registry = registry
        self.detail = detail
        self.changed: set[SeriesKey] | None = None
        self.removed: set[SeriesKey] | None = None
        self._m: dict[str, Any] = {}
        specs = event_fed()
        self._specs = {spec.name: spec for spec in specs}
        for spec in specs:
            labels, doc = served_labels(spec, detail), served_help(spec, detail)
            if spec.kind is MetricKind.GAUGE:
                metric: Any = Gauge(spec.name, doc, labels, registry=registry)
            elif spec.kind is MetricKind.COUNTER:
                metric = Counter(spec.family, doc, labels, registry=registry)
            else:
                metric = Histogram(spec.name, doc, labels, registry=registry, buckets=spec.buckets)
            self._m[spec.name] = metric
        # What /metrics serves, by served key. A family without labels is one series from
        # the start (at zero), as it is served.
        self._children: dict[SeriesKey, Any] = {
            (spec.name, ()): self._m[spec.name] for spec in specs if not served_labels(spec, detail)
        }
        # What the handlers write to, by catalogue key: (the writer, the served key it
        # changes, or None for a folding writer, which reports its own).
        self._writers: dict[SeriesKey, tuple[Any, SeriesKey | None]] = {
            key: (child, key) for key, child in self._children.items()
        }
        self._folded: dict[SeriesKey, _FoldGroup] = {}
        self._unfolded: set[_FoldGroup] = set()
        """Fold groups written since the last ``fold()``."""
        # Metrics the catalogue derives from one event field (MetricSpec.update): applied by
        # _apply_derived with no handler code; the handlers below do the rest.
        self._derived: dict[tuple[str, str | None], list[tuple[MetricSpec, Derived]]] = {}
        for spec in specs:
            if spec.update is not None:
                d = derived(spec)
                self._derived.setdefault((d.event_type, d.variant), []).append((spec, d))
        self._seed_stages: dict[tuple[int, str], str] = {}
        self._seed_series: dict[int, set[str]] = {}
        self._envs: set[str] = set()  # env ids seen, for a window over every env
        self._reward_parts: dict[int, dict[str, float]] = {}
        self._episodes_seen: int | None = None
        self._preinitialise()
        if multi_rank:
            for op in COLLECTIVE_OPS:
                self._child("esper_collective_wait_seconds", op)
        self._handlers: dict[TelemetryEventType, Callable[[TelemetryEvent], None]] = {
            ET.TRAINING_STARTED: self._on_training_started,
            ET.TRAINING_COMPLETED: self._on_training_completed,
            ET.PPO_UPDATE_COMPLETED: self._on_ppo_update,
            ET.EPOCH_COMPLETED: self._on_epoch,
            ET.BATCH_EPOCH_COMPLETED: self._on_batch,
            ET.ANALYTICS_SNAPSHOT: self._on_snapshot,
            ET.SEED_GERMINATED: self._on_germinated,
            ET.SEED_STAGE_CHANGED: self._on_stage_changed,
            ET.COUNTERFACTUAL_COMPUTED: self._on_counterfactual,
            ET.TELEMETRY_LEVEL_CHANGED: self._on_level_changed,
        }

    def apply(self, event: TelemetryEvent) -> None:
        """Update every series ``event`` feeds."""
        self._child("esper_telemetry_events_total", event.event_type.name).inc()
        self._apply_derived(event)
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(event)

    def fold(self) -> None:
        """Serve the folds of the gauges written since the last call (rank detail)."""
        while self._unfolded:
            self._unfolded.pop().refresh()

    def series(self) -> list[SeriesKey]:
        """Every series that exists now."""
        return list(self._children)

    def has_series(self, key: SeriesKey) -> bool:
        return key in self._children

    def family_names(self) -> list[str]:
        """The catalogue names of the families, in the order they were registered."""
        return list(self._m)

    def child(self, key: SeriesKey) -> Any:
        """The prometheus_client child of an existing series."""
        return self._children[key]

    def metric(self, name: str) -> Any:
        """The prometheus_client metric (all its children) of a catalogue name."""
        return self._m[name]

    # -- children, bound once --------------------------------------------------------------

    def _child(self, name: str, *labels: str) -> Any:
        """What a handler writes the series (catalogue labels) to, bound once: its child, or
        at rank detail a writer that folds it over the envs."""
        writer = self._writers.get((name, labels))
        if writer is None:
            writer = self._bind(name, labels)
        child, served = writer
        if served is not None and self.changed is not None:
            self.changed.add(served)
        return child

    def _serve(self, name: str, labels: tuple[str, ...]) -> tuple[Any, SeriesKey]:
        """The served series (served labels), made when first needed."""
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            metric = self._m[name]
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child, key

    def _bind(self, name: str, labels: tuple[str, ...]) -> tuple[Any, SeriesKey | None]:
        spec = self._specs[name]
        fold = fold_of(spec) if self.detail is MetricDetail.RANK else None
        writer: tuple[Any, SeriesKey | None]
        if fold is None:
            writer = self._serve(name, labels)
        else:
            at = spec.labels.index("env_id")
            env, rest = labels[at], labels[:at] + labels[at + 1 :]
            if spec.kind is not MetricKind.GAUGE:  # counters and histograms add up exactly
                assert fold is Fold.SUM, spec.name
                writer = self._serve(name, rest)
            else:
                group = self._folded.get((name, rest))
                if group is None:
                    group = self._folded[(name, rest)] = _FoldGroup(self, name, rest, fold)
                writer = (_FoldedGauge(group, env), None)
        self._writers[(name, labels)] = writer
        return writer

    def _unserve(self, key: SeriesKey) -> None:
        if self._children.pop(key, None) is None:
            return
        self._m[key[0]].remove(*key[1])
        if self.removed is not None:
            self.removed.add(key)
            if self.changed is not None:
                self.changed.discard(key)

    def _remove(self, name: str, *labels: str) -> None:
        """Remove the series (catalogue labels); at rank detail, its env from the fold."""
        writer = self._writers.pop((name, labels), None)
        if writer is None:
            return
        child, served = writer
        if isinstance(child, _FoldedGauge):
            child.remove()
        elif served is not None:
            self._unserve(served)

    def _preinitialise(self) -> None:
        for scope in _ANOMALY_SCOPES:
            for kind in _ANOMALY_KINDS:
                self._child("esper_gradient_anomalies_total", scope, kind)
        for head in ACTION_HEADS:
            self._child("esper_action_mask_hits_total", head)
            self._child("esper_action_mask_checks_total", head)
        for op in Op:
            for success in ("true", "false"):
                self._child("esper_actions_total", op.name, success)
        for stage in SeedStage:
            if stage.name != "UNKNOWN":
                self._child("esper_seeds", stage.name).set(0)
        for event_type in ET:
            self._child("esper_telemetry_events_total", event_type.name)

    # -- handlers --------------------------------------------------------------------------

    def _apply_derived(self, e: TelemetryEvent) -> None:
        d = e.data
        disc = DISCRIMINATORS.get(e.event_type)
        updates = self._derived.get((e.event_type.name, None if disc is None else d.get(disc)))
        for spec, how in updates or ():
            labels = tuple(str(d[label]) for label in spec.labels)
            if how.update is Update.COUNT:
                self._child(spec.name, *labels).inc()
                continue
            value = d[how.field] if how.field is not None else None
            if value is None:
                continue  # a nullable field with nothing to report this time
            if how.update is Update.MS:
                self._child(spec.name, *labels).observe(value / 1000.0)
            elif how.update is Update.PERCENT:
                self._child(spec.name, *labels).set(value / 100.0)
            elif how.update is Update.FLAG:
                self._child(spec.name, *labels).set(1.0 if value else 0.0)
            else:
                self._child(spec.name, *labels).set(value)

    def _set(self, name: str, value: float, *labels: str) -> None:
        self._child(name, *labels).set(value)

    def _on_training_started(self, e: TelemetryEvent) -> None:
        d = e.data
        # Every slot x blueprint starts at zero, so increase() sees the first germination
        # and dashboards draw a zero line rather than no data.
        for slot_id in d["slot_ids"]:
            for blueprint_id in d["blueprint_ids"]:
                self._child("esper_seed_germinated_total", str(slot_id), str(blueprint_id))
                self._child("esper_seed_fossilized_total", str(slot_id), str(blueprint_id))
        self._set("esper_run_info", 1, str(d["run_id"]), str(d["task"]), str(d["mode"]),
                  str(d["reward_mode"]))  # fmt: skip

    def _on_training_completed(self, e: TelemetryEvent) -> None:
        # The episodes of a run without BATCH_EPOCH_COMPLETED; of a multi-rank run, counted
        # by rank 0 alone (every rank reports the run's episodes).
        if e.data["status"] == "completed" and self._episodes_seen is None and not e.rank:
            self._child("esper_episodes_completed_total").inc(e.data["episodes_completed"])

    def _on_ppo_update(self, e: TelemetryEvent) -> None:
        d = e.data
        for head in ACTION_HEADS:
            self._set("esper_ppo_head_entropy", d[f"head_{head}_entropy"], head)
            self._set("esper_ppo_head_grad_norm", d[f"head_{head}_grad_norm"], head)

    def _on_epoch(self, e: TelemetryEvent) -> None:
        d = e.data
        if d["scope"] != "env":
            return
        env = str(d["env_id"])
        self._set("esper_last_progress_timestamp_seconds", e.timestamp_ns / 1e9)
        # The seeds map is the truth about this env's slots: it also covers hosts that were
        # replaced at an episode boundary without a lifecycle event.
        env_id = int(d["env_id"])
        if env not in self._envs:
            self._envs.add(env)
            self._set("esper_env_telemetry_escalated", 0.0, env)  # its level until an anomaly
        seeds: dict[str, dict[str, Any]] = d["seeds"]
        for key in [k for k in self._seed_stages if k[0] == env_id]:
            del self._seed_stages[key]
        live = set()
        for slot_id, s in seeds.items():
            self._seed_stages[(env_id, slot_id)] = s["stage"]
            live.add(slot_id)
            self._set("esper_seed_alpha", s["alpha"], env, slot_id)
            self._set("esper_seed_gradient_norm", s["gradient_norm"], env, slot_id)
            self._set("esper_seed_gradient_total_norm", s["gradient_total_norm"], env, slot_id)
            self._set("esper_seed_gradient_health", s["gradient_health"], env, slot_id)
        for slot_id in self._seed_series.get(env_id, set()) - live:
            for name in ("esper_seed_alpha", "esper_seed_gradient_norm",
                         "esper_seed_gradient_total_norm",
                         "esper_seed_gradient_health"):  # fmt: skip
                self._remove(name, env, slot_id)
        self._seed_series[env_id] = live
        self._refresh_stage_counts()

    def _on_level_changed(self, e: TelemetryEvent) -> None:
        d = e.data
        value = 1.0 if d["to_level"] == "debug" else 0.0
        envs = self._envs if d["env_id"] is None else {str(d["env_id"])}
        for env in envs:
            self._set("esper_env_telemetry_escalated", value, env)

    def _refresh_stage_counts(self) -> None:
        counts = dict.fromkeys((s.name for s in SeedStage if s.name != "UNKNOWN"), 0)
        for stage in self._seed_stages.values():
            counts[stage] = counts.get(stage, 0) + 1
        for stage, n in counts.items():
            self._set("esper_seeds", n, stage)

    def _on_batch(self, e: TelemetryEvent) -> None:
        d = e.data
        if self._episodes_seen is None:
            self._episodes_seen = d["start_episode"]
        delta = d["episodes_completed"] - self._episodes_seen
        if delta > 0:
            self._child("esper_episodes_completed_total").inc(delta)
            self._episodes_seen = d["episodes_completed"]

    def _on_snapshot(self, e: TelemetryEvent) -> None:
        d = e.data
        kind = d["kind"]
        if kind == "mask_hit_rates":
            for head, hits in d["mask_hits"].items():
                total = d["mask_total"].get(head, 0)
                self._child("esper_action_mask_hits_total", head).inc(hits)
                self._child("esper_action_mask_checks_total", head).inc(total)
                self._set("esper_action_mask_hit_ratio", hits / total if total else 0.0, head)
        elif kind == "action_distribution":
            for op, n in d["action_counts"].items():
                ok = d["success_counts"].get(op, 0)
                self._child("esper_actions_total", op, "true").inc(ok)
                self._child("esper_actions_total", op, "false").inc(max(n - ok, 0))
        elif kind == "collectives":
            for op, seconds in d["wait_seconds"].items():
                child = self._child("esper_collective_wait_seconds", str(op))
                for s in seconds:
                    child.observe(s)
        elif kind == "reward_summary":
            self._reward_parts[int(d["env_id"])] = dict(d["summary"])
            parts = self._reward_parts.values()
            for component in {c for p in parts for c in p}:
                values = [p[component] for p in parts if component in p]
                self._set("esper_reward_component", sum(values) / len(values), component)

    def _on_germinated(self, e: TelemetryEvent) -> None:
        self._seed_stages[(int(e.data["env_id"]), str(e.data["slot_id"]))] = "GERMINATED"
        self._refresh_stage_counts()

    def _on_stage_changed(self, e: TelemetryEvent) -> None:
        d = e.data
        key = (int(d["env_id"]), str(d["slot_id"]))
        if d["to_stage"] in _INACTIVE:
            self._seed_stages.pop(key, None)
        else:
            self._seed_stages[key] = d["to_stage"]
        self._refresh_stage_counts()

    def _on_counterfactual(self, e: TelemetryEvent) -> None:
        if not e.data["available"]:
            reason = str(e.data["reason"] or "unknown")
            self._child("esper_counterfactual_unavailable_total", reason).inc()


class _FoldGroup:
    """One folded series group at rank detail: a gauge family's series that differ only by
    ``env_id``, served as their sum or as their mean, min and max (``Fold``)."""

    __slots__ = ("fold", "mapping", "name", "rest", "values")

    def __init__(self, mapping: MetricMapping, name: str, rest: tuple[str, ...], fold: Fold):
        self.mapping = mapping
        self.name = name
        self.rest = rest
        self.fold = fold
        self.values: dict[str, float] = {}
        """Each env's current value."""

    def refresh(self) -> None:
        """Serve the fold of the envs' values now (nothing once no env has one): what
        ``sum``, or ``avg``, ``min`` and ``max``, ``without (env_id)`` give at env detail."""
        v = self.values.values()
        stats: dict[tuple[str, ...], float] = {}
        if v and self.fold is Fold.SUM:
            stats = {(): float(sum(v))}
        elif v:
            # As PromQL's avg, min and max over the env series: a NaN env makes the mean NaN,
            # and min and max skip it unless every env is NaN.
            numbers = [x for x in v if not math.isnan(x)] or [math.nan]
            stats = {("mean",): sum(v) / len(v), ("min",): min(numbers), ("max",): max(numbers)}
        mapping = self.mapping
        suffixes: tuple[tuple[str, ...], ...] = (
            ((),) if self.fold is Fold.SUM else tuple((s,) for s in FOLD_STATS)
        )
        for suffix in suffixes:
            labels = self.rest + suffix
            value = stats.get(suffix)
            if value is None:
                mapping._unserve((self.name, labels))
                continue
            child, key = mapping._serve(self.name, labels)
            child.set(value)
            if mapping.changed is not None:
                mapping.changed.add(key)


class _FoldedGauge:
    """What a handler writes one env's gauge to at rank detail: the env's value, folded at
    the next ``MetricMapping.fold()``."""

    __slots__ = ("env", "group")

    def __init__(self, group: _FoldGroup, env: str) -> None:
        self.group = group
        self.env = env

    def set(self, value: float) -> None:
        group = self.group
        group.values[self.env] = float(value)
        group.mapping._unfolded.add(group)

    def remove(self) -> None:
        group = self.group
        if group.values.pop(self.env, None) is not None:
            group.mapping._unfolded.add(group)


def families(registry: CollectorRegistry) -> set[str]:
    """Names of the metric families a registry exposes (counters with ``_total``)."""
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
