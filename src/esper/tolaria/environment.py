"""MorphogeneticEnv: one host model training epoch by epoch, with its slots, governor and
telemetry. Both controllers (heuristic and PPO) drive envs through ``run_epoch`` and ``apply``.

Device values reach the host once per epoch: losses, accuracy counts and gradient statistics
are accumulated as device tensors during the epoch and read back together with one
``.tolist()`` after validation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from esper.kasmina import HostCNN, SeedSlot, SlotContext
from esper.leyline import (
    BlendMode,
    Op,
    SeedStage,
    Severity,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    emit_event,
)
from esper.nissa import emit as hub_emit
from esper.tolaria.counterfactual import (
    emit_counterfactual_computed,
    emit_counterfactual_unavailable,
)
from esper.tolaria.data import TaskData
from esper.tolaria.episode import (
    EnvConfig,
    EpisodeSettings,
    EpochResult,
    Fault,
    emit_aggregate_epoch,
    never_stop,
)
from esper.tolaria.governor import TolariaGovernor
from esper.tolaria.gradients import STATS_LEN, SeedGradientCollector, gradient_anomaly

__all__ = [
    "EXPLODING_FAULT_SCALE",
    "LOSS_SPIKE_RATIO",
    "SLOW_RANK",
    "STRAGGLER_FACTOR",
    "EnvConfig",
    "EpisodeSettings",
    "EpochResult",
    "Fault",
    "MorphogeneticEnv",
    "emit_aggregate_epoch",
    "never_stop",
]

ET = TelemetryEventType

HOST_WIDTHS: dict[str, tuple[int, int, int]] = {
    # Deliberately small for the 8x8 digits: a (8, 16, 32) host alone reaches ~99% and
    # leaves seeds nothing to show; (4, 8, 8) stops near 97% and seeds can add to it.
    "digits": (4, 8, 8),
    "cifar10": (16, 32, 64),
}

LOSS_SPIKE_RATIO = 2.5
"""The ``loss-spike`` fault raises an epoch's mean training loss about this many times."""
EXPLODING_FAULT_SCALE = 1e4
"""How much the exploding-gradients fault scales the loss before backward."""
SLOW_RANK = "slow-rank"
"""The fault of a straggling node: from its epoch on, the run's last env (on the last rank)
takes ``STRAGGLER_FACTOR`` + 1 times as long over every epoch."""
STRAGGLER_FACTOR = 3.0


class MorphogeneticEnv:
    """One environment: a host model on a device, trained on a task, grown by a controller."""

    def __init__(
        self,
        env_id: int,
        task: TaskData,
        *,
        device: str = "cpu",
        seed: int = 0,
        config: EnvConfig | None = None,
        telemetry: TelemetryConfig | None = None,
        emit: Callable[[TelemetryEvent], None] = hub_emit,
        fast_mode: bool = False,
        faults: tuple[Fault, ...] = (),
        straggler: bool = False,
    ) -> None:
        """``straggler``: this env is the run's last, where a ``slow-rank`` fault applies."""
        self.env_id = env_id
        self.task = task
        self.device = device
        self.seed = seed
        self.config = config or EnvConfig()
        self.context = SlotContext(
            env_id=env_id,
            device=device,
            telemetry=telemetry or TelemetryConfig(),
            fast_mode=fast_mode,
            emit=emit,
        )
        self.faults = tuple(f for f in faults if f.kind != SLOW_RANK) if env_id == 0 else ()
        slow = [f.epoch for f in faults if f.kind == SLOW_RANK]
        self.slow_from = min(slow) if slow and straggler else None
        self.collector = SeedGradientCollector(
            self.config.vanishing_threshold, self.config.exploding_threshold
        )
        self.seeds_created = 0
        self.counts = {"germinated": 0, "fossilized": 0, "culled": 0}
        self.reset(episode=0)

    # -- episodes ------------------------------------------------------------------------------

    def reset(self, episode: int) -> None:
        """A fresh host for a new episode (same initial weights for the same seed/episode)."""
        torch.manual_seed(self.seed * 1_000_003 + episode * 7919 + self.env_id)
        self.generator = torch.Generator().manual_seed(self.seed + 31 * episode + self.env_id)
        self.episode = episode
        self.model = HostCNN(
            self.task.in_channels,
            self.task.n_classes,
            self.config.widths or HOST_WIDTHS.get(self.task.name, (16, 32, 64)),
            self.config.lifecycle,
            self.context,
        ).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.host_parameters(), lr=self.config.host_lr, momentum=self.config.momentum
        )
        self.governor = TolariaGovernor(
            self.model, env_id=self.env_id, optimizer=self.optimizer, emit=self._emit_lifecycle
        )
        self.governor.snapshot()
        self.last_val_accuracy = 0.0
        self.global_step = 0  # optimizer steps of the host this episode

    @property
    def slots(self) -> list[SeedSlot]:
        return list(self.model.seed_slots.values())

    def seed_params(self) -> int:
        """Parameters added by live and fossilized seeds."""
        return sum(s.state.params for s in self.slots if s.seed is not None and s.state)

    # -- one epoch -----------------------------------------------------------------------------

    def _fault(self, inner_epoch: int) -> str | None:
        return next((f.kind for f in self.faults if f.epoch == inner_epoch), None)

    def _train(self, fault: str | None) -> tuple[torch.Tensor, list[torch.Tensor | None], float]:
        model, task, cfg = self.model, self.task, self.config
        model.train()
        host_params = model.host_parameters()
        seeded = [s for s in self.slots if s.seed is not None]
        n = task.train_x.shape[0]
        order = torch.randperm(n, generator=self.generator).to(self.device)
        sums = torch.zeros(2, device=self.device)  # loss * samples, correct
        host_stats: torch.Tensor | None = None
        seed_stats: list[torch.Tensor | None] = [None] * len(seeded)
        wait = 0.0
        for start in range(0, n, cfg.batch_size):
            t0 = time.perf_counter()
            idx = order[start : start + cfg.batch_size]
            xb, yb = task.train_x[idx], task.train_y[idx]
            wait += time.perf_counter() - t0
            self.optimizer.zero_grad(set_to_none=True)
            for slot in seeded:
                slot.zero_grad_seed()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if fault == "nan-loss":
                loss = loss * torch.tensor(math.nan, device=self.device)
            elif fault == "loss-spike" and start == 0:
                # One batch's loss, scaled so the epoch's mean loss is about LOSS_SPIKE_RATIO
                # times what it would be: trained on (its gradient clipped as always) and
                # reported. Below the governor's panic (3x the recent mean) by design.
                loss = loss * (1.0 + (LOSS_SPIKE_RATIO - 1.0) * math.ceil(n / cfg.batch_size))
            (loss * EXPLODING_FAULT_SCALE if fault == "exploding-gradients" else loss).backward()
            host_stats = self.collector.merge(host_stats, self.collector.stats(host_params))
            for i, slot in enumerate(seeded):
                seed_stats[i] = self.collector.merge(
                    seed_stats[i], self.collector.stats(slot.trainable_parameters())
                )
            torch.nn.utils.clip_grad_norm_(host_params, cfg.clip_norm)
            self.optimizer.step()
            self.global_step += 1
            for slot in seeded:
                torch.nn.utils.clip_grad_norm_(slot.trainable_parameters(), cfg.clip_norm)
                slot.step_seed()
            batch = torch.stack(
                [loss.detach() * yb.shape[0], (logits.argmax(1) == yb).sum().float()]
            )
            sums += batch
        return sums, [host_stats, *seed_stats], wait

    @torch.no_grad()
    def _validate_sums(self) -> torch.Tensor:
        """(loss * samples, correct) over the validation set, on the device."""
        self.model.eval()
        sums = torch.zeros(2, device=self.device)
        for start in range(0, self.task.val_x.shape[0], 1024):
            xb = self.task.val_x[start : start + 1024]
            yb = self.task.val_y[start : start + 1024]
            logits = self.model(xb)
            sums += torch.stack(
                [
                    F.cross_entropy(logits, yb, reduction="sum"),
                    (logits.argmax(1) == yb).sum().float(),
                ]
            )
        return sums

    def _pct(self, correct: float, total: int) -> float:
        return 100.0 * correct / max(total, 1)

    def run_epoch(self, inner_epoch: int, global_epoch: int, max_epochs: int) -> EpochResult:
        """Train and validate one epoch, judge it (governor, gradients, counterfactuals),
        advance every slot's lifecycle, and emit the epoch's telemetry."""
        ctx = self.context
        ctx.inner_epoch, ctx.global_epoch, ctx.max_epochs = inner_epoch, global_epoch, max_epochs
        seeded = [s for s in self.slots if s.seed is not None]
        t0 = time.perf_counter()
        train_sums, grad_stats, wait = self._train(self._fault(inner_epoch))
        val_sums = self._validate_sums()
        # The alpha=0 baselines are measured now, on the device, so they share the epoch's one
        # read-back. A rollback below culls every live seed, so none of them goes stale.
        measured = self._baseline_slots(inner_epoch == max_epochs)
        baseline_sums = []
        for slot in measured:
            with slot.force_alpha(0.0):
                baseline_sums.append(self._validate_sums())
        none = torch.full((STATS_LEN,), -1.0, device=self.device)
        packed = torch.cat(
            [
                train_sums,
                val_sums,
                *(s if s is not None else none for s in grad_stats),
                *baseline_sums,
            ]
        )
        values = packed.tolist()  # the epoch's one host synchronisation
        if self.slow_from is not None and inner_epoch >= self.slow_from:
            # The injected straggler: this env's node is slow (not a synchronisation).
            time.sleep(STRAGGLER_FACTOR * (time.perf_counter() - t0))
        step_seconds = time.perf_counter() - t0
        n_train, n_val = self.task.train_x.shape[0], self.task.val_x.shape[0]
        train_loss = values[0] / n_train
        train_acc = self._pct(values[1], n_train)
        val_loss, val_acc = values[2] / n_val, self._pct(values[3], n_val)
        grads = [
            None
            if values[4 + i * STATS_LEN] < 0
            else self.collector.summarize(values[4 + i * STATS_LEN : 4 + (i + 1) * STATS_LEN])
            for i in range(len(grad_stats))
        ]
        at = 4 + len(grad_stats) * STATS_LEN
        baselines = {
            slot.slot_id: self._pct(values[at + 2 * i + 1], n_val)
            for i, slot in enumerate(measured)
        }
        host_grads = grads[0] or self.collector.collect([])
        seed_grads = {s.slot_id: g for s, g in zip(seeded, grads[1:], strict=True) if g}
        self._report_anomalies(host_grads, seed_grads)

        reason = self.governor.check(train_loss)
        if self.governor.last_spike is not None:
            self._report_spike(*self.governor.last_spike)
        if reason is not None:
            self.counts["culled"] += self.governor.execute_rollback(
                reason, train_loss, self.optimizer
            )
            val = self._validate_sums().tolist()  # the restored model's real accuracy
            val_loss, val_acc = val[0] / n_val, self._pct(val[1], n_val)

        counterfactuals = self._counterfactuals(val_acc, baselines)
        for slot in self.slots:
            before = slot.stage
            slot.end_epoch(val_acc, seed_grads.get(slot.slot_id), counterfactuals.get(slot.slot_id))
            if slot.stage is SeedStage.CULLED and before is not SeedStage.CULLED:
                self.counts["culled"] += 1
            if slot.state is not None and slot.slot_id in seed_grads:
                g = seed_grads[slot.slot_id]
                slot.state.sync_telemetry(
                    g["gradient_norm"],
                    g["gradient_health"],
                    g["has_vanishing"],
                    g["has_exploding"],
                    inner_epoch,
                    max_epochs,
                    total_norm=g["total_norm"],
                )
        self.last_val_accuracy = val_acc
        result = EpochResult(
            inner_epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            host_grads,
            seed_grads,
            counterfactuals,
            reason,
            step_seconds,
            wait,
            n_train,
        )
        self._emit_epoch(result)
        return result

    # -- counterfactuals -----------------------------------------------------------------------

    @staticmethod
    def _blended(slot: SeedSlot) -> bool:
        state = slot.state
        return (
            state is not None
            and slot.seed is not None
            and state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY)
        )

    def _baseline_slots(self, final_epoch: bool) -> list[SeedSlot]:
        """Blended seeds whose alpha=0 baseline this epoch measures (per the schedule)."""
        measure = self.config.counterfactual == "every_epoch" or (
            self.config.counterfactual == "final_epoch" and final_epoch
        )
        return [s for s in self.slots if self._blended(s)] if measure else []

    def _counterfactuals(
        self, val_acc: float, baselines: dict[str, float]
    ) -> dict[str, float | None]:
        """Contribution (real minus alpha=0 accuracy) of every live, not yet fossilized seed
        that has a measured baseline; None, with the reason emitted, for the others."""
        out: dict[str, float | None] = {}
        for slot in self.slots:
            state = slot.state
            if state is None or slot.seed is None or state.stage is SeedStage.FOSSILIZED:
                continue
            if not self._blended(slot):
                self._emit_cf(slot.slot_id, None, None, "not_blended")
                out[slot.slot_id] = None
            elif slot.slot_id not in baselines:
                self._emit_cf(slot.slot_id, None, None, "missing_baseline")
                out[slot.slot_id] = None
            else:
                baseline = baselines[slot.slot_id]
                out[slot.slot_id] = val_acc - baseline
                self._emit_cf(slot.slot_id, val_acc, baseline, None)
        return out

    # -- controller actions --------------------------------------------------------------------

    def apply(
        self,
        op: Op,
        slot_id: str,
        blueprint_id: str = "conv_light",
        blend: BlendMode = BlendMode.LINEAR,
    ) -> bool:
        """Carry out a controller decision; False when the slot's state does not allow it."""
        slot = self.model.slot(slot_id)
        if op is Op.WAIT:
            return True
        if op is Op.GERMINATE:
            if not slot.is_dormant:
                return False
            self.seeds_created += 1
            seed_id = f"seed-{self.env_id}-{self.seeds_created}"
            slot.germinate(
                blueprint_id, seed_id, blend_mode=blend, val_accuracy=self.last_val_accuracy
            )
            self.counts["germinated"] += 1
            return True
        if op is Op.CULL:
            done = slot.cull("controller")
            self.counts["culled"] += int(done)
            return done
        done = slot.fossilize()
        self.counts["fossilized"] += int(done)
        return done

    # -- telemetry -----------------------------------------------------------------------------

    def _emit(
        self,
        event_type: TelemetryEventType,
        data: dict[str, Any],
        message: str,
        severity: Severity = Severity.INFO,
        slot_id: str | None = None,
    ) -> None:
        emit_event(
            self.context.emit,
            event_type,
            data,
            message=message,
            severity=severity,
            slot_id=slot_id,
            epoch=self.context.inner_epoch,
        )

    def _emit_lifecycle(self, event: TelemetryEvent) -> None:
        """Where the governor's events go: the env's sink, at lifecycle level, stamped with the
        epoch."""
        ctx = self.context
        if ctx.fast_mode or not ctx.telemetry.lifecycle:
            return
        if event.epoch is None:
            event.epoch = ctx.inner_epoch
        ctx.emit(event)

    def _emit_cf(
        self, slot_id: str, real: float | None, baseline: float | None, reason: str | None
    ) -> None:
        ctx = self.context
        if ctx.fast_mode or not ctx.telemetry.analytics:
            return
        if real is None or baseline is None:
            emit_counterfactual_unavailable(
                ctx, self.env_id, slot_id, reason or "missing_baseline", epoch=ctx.inner_epoch
            )
        else:
            emit_counterfactual_computed(
                ctx, self.env_id, slot_id, real, baseline, epoch=ctx.inner_epoch
            )

    def _report_spike(self, loss: float, band: float) -> None:
        """GRADIENT_ANOMALY kind loss_spike: the loss rose far above its recent history, short
        of the governor's panic (which rolls back instead)."""
        ctx = self.context
        if ctx.fast_mode or not ctx.telemetry.lifecycle:
            return
        self._emit(
            ET.GRADIENT_ANOMALY,
            {"scope": "host", "kind": "loss_spike", "env_id": self.env_id, "slot_id": None,
             "value": loss, "threshold": band},
            f"host loss spike: {loss:.3g} above its recent band {band:.3g}",
            Severity.WARNING,
        )  # fmt: skip

    def _report_anomalies(self, host: dict[str, Any], seeds: dict[str, dict[str, Any]]) -> None:
        ctx, cfg = self.context, self.config
        if ctx.fast_mode or not ctx.telemetry.lifecycle:
            return
        for scope, slot_id, g in [("host", None, host)] + [
            ("seed", k, v) for k, v in seeds.items()
        ]:
            data = gradient_anomaly(
                scope,
                g,
                vanishing_threshold=cfg.vanishing_threshold,
                exploding_threshold=cfg.exploding_threshold,
                env_id=self.env_id,
                slot_id=slot_id,
            )
            if data is not None:
                self._emit(
                    ET.GRADIENT_ANOMALY,
                    data,
                    f"{scope} gradients {data['kind']}: norm {data['value']:.3g}",
                    Severity.WARNING,
                    slot_id,
                )

    def seed_summaries(self) -> dict[str, dict[str, Any]]:
        """slot_id -> the per-seed record of EPOCH_COMPLETED, for slots holding a seed."""
        out = {}
        for slot in self.slots:
            state = slot.state
            if state is None:
                continue
            t = state.telemetry
            out[slot.slot_id] = {
                "stage": state.stage.name,
                "blueprint_id": state.blueprint_id,
                "alpha": state.alpha,
                "accuracy_delta": state.metrics.accuracy_delta,
                "epochs_in_stage": state.epochs_in_stage,
                "gradient_norm": t.gradient_norm,
                "gradient_total_norm": t.gradient_total_norm,
                "gradient_health": t.gradient_health,
                "has_vanishing": t.has_vanishing,
                "has_exploding": t.has_exploding,
            }
        return out

    def _emit_epoch(self, r: EpochResult) -> None:
        ctx = self.context
        if ctx.fast_mode or not ctx.telemetry.analytics:
            return
        self._emit(
            ET.EPOCH_COMPLETED,
            {
                "scope": "env",
                "env_id": self.env_id,
                "inner_epoch": r.inner_epoch,
                "train_loss": r.train_loss,
                "train_accuracy": r.train_accuracy,
                "val_loss": r.val_loss,
                "val_accuracy": r.val_accuracy,
                "host_grad_norm": r.host_gradients["total_norm"],
                "seeds": self.seed_summaries(),
            },
            f"env {self.env_id} epoch {r.inner_epoch}: val {r.val_accuracy:.2f}%",
        )
