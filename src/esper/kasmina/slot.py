"""SeedSlot: one place in the host where a seed lives, and the seed lifecycle it runs.

    DORMANT -> GERMINATED -> TRAINING -> BLENDING -> PROBATIONARY -> FOSSILIZED
    (GERMINATED | TRAINING | BLENDING | PROBATIONARY) -> CULLED
    CULLED -> EMBARGOED -> RESETTING -> DORMANT

- GERMINATED and TRAINING: the seed learns from the host's loss through a straight-through
  "incubator": the host's output is numerically unchanged and no gradient reaches the host
  through the seed (gradient isolation).
- BLENDING: the output is ``x + alpha * seed(x)`` with alpha rising on a schedule (linear,
  sigmoid, or gated: it advances only while accuracy holds).
- PROBATIONARY: alpha is 1 and the seed is watched; the controller fossilizes or culls it.
- Quality gates (G0..G3) guard each promotion and are reported as SEED_GATE_EVALUATED.

All telemetry goes through ``_emit_telemetry``, which honours fast mode and lifecycle-only
mode, sends to the slot's ``on_telemetry`` callback (or, when none is set, to its context's
``emit``), and never lets a telemetry failure abort a lifecycle operation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esper.kasmina.blueprints import build_seed, count_params
from esper.kasmina.state import SeedState
from esper.leyline import (
    BlendMode,
    EsperError,
    SeedStage,
    Severity,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    emit_event,
    is_active_stage,
    is_valid_transition,
)
from esper.nissa import emit as hub_emit

ET = TelemetryEventType
_SIGMOID_STEEPNESS = 8.0


class LifecycleError(EsperError):
    """A lifecycle operation that the seed's stage does not allow."""


@dataclass(slots=True)
class LifecycleConfig:
    """Epoch counts and tolerances of the lifecycle."""

    min_training_epochs: int = 3
    max_training_epochs: int = 8
    blending_epochs: int = 4
    probation_epochs: int = 2
    max_probation_epochs: int = 8
    embargo_epochs: int = 2
    blend_tolerance: float = 2.0
    """Points of validation accuracy a blending seed may cost before the gated schedule holds
    and gate G2 fails."""
    seed_lr: float = 0.02


@dataclass(slots=True)
class SlotContext:
    """Where and when a slot lives, for its telemetry. The environment updates it per epoch."""

    env_id: int = 0
    device: str = "cpu"
    inner_epoch: int = 0
    global_epoch: int = 0
    max_epochs: int = 25
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    fast_mode: bool = False
    """No telemetry at all (e.g. a baseline run nobody watches)."""
    emit: Callable[[TelemetryEvent], None] = hub_emit


def alpha_schedule(mode: BlendMode, progress: float) -> float:
    """Alpha after ``progress`` (0..1) of the blending period, for the scheduled modes."""
    progress = min(1.0, max(0.0, progress))
    if mode is BlendMode.SIGMOID:
        lo = 1.0 / (1.0 + math.exp(_SIGMOID_STEEPNESS / 2))
        raw = 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (progress - 0.5)))
        return (raw - lo) / (1.0 - 2 * lo)
    return progress


class SeedSlot(nn.Module):
    """A slot in the host; holds at most one seed and runs its lifecycle.

    ``context`` is shared by the slots of one host (env, epoch, telemetry level). The keywords
    are per slot: ``device`` where its seeds are built (default: the context's);
    ``on_telemetry`` receives its events (default: the context's ``emit``); ``fast_mode``
    silences it; ``task_config`` is what the task says about the slot, kept for its callers
    (the lifecycle itself does not read it).
    """

    def __init__(
        self,
        slot_id: str,
        channels: int,
        lifecycle: LifecycleConfig | None = None,
        context: SlotContext | None = None,
        *,
        device: str | None = None,
        task_config: Any = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        fast_mode: bool = False,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.channels = channels
        self.lifecycle = lifecycle or LifecycleConfig()
        self.context = context or SlotContext(device=device or "cpu")
        self.device = device or self.context.device
        self.task_config = task_config
        self.on_telemetry = on_telemetry
        self.fast_mode = fast_mode
        self.seed: nn.Module | None = None
        self.state: SeedState | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.telemetry_failures = 0
        self._alpha_override: float | None = None
        self._embargo_left = 0

    # -- views ---------------------------------------------------------------------------------

    @property
    def stage(self) -> SeedStage:
        return SeedStage.DORMANT if self.state is None else self.state.stage

    @property
    def is_dormant(self) -> bool:
        return self.state is None

    @property
    def has_live_seed(self) -> bool:
        """A seed that is alive and not yet permanent."""
        return self.state is not None and is_active_stage(self.state.stage)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seed, state = self.seed, self.state
        if seed is None or state is None:
            return x
        alpha = state.alpha if self._alpha_override is None else self._alpha_override
        if state.stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
            if self._alpha_override == 0.0:
                return x
            delta = seed(x.detach())
            return x + (delta - delta.detach())  # incubator: value unchanged, seed still learns
        if alpha == 0.0:
            return x
        return x + alpha * seed(x)

    @contextmanager
    def force_alpha(self, alpha: float) -> Iterator[None]:
        """Evaluate with the seed's alpha forced (0.0 gives the counterfactual baseline)."""
        previous, self._alpha_override = self._alpha_override, alpha
        try:
            yield
        finally:
            self._alpha_override = previous

    # -- controller operations -----------------------------------------------------------------

    def germinate(
        self,
        blueprint_id: str,
        seed_id: str,
        *,
        blend_mode: BlendMode = BlendMode.LINEAR,
        val_accuracy: float = 0.0,
    ) -> SeedState:
        """Grow a new seed from ``blueprint_id``. Raises LifecycleError unless DORMANT."""
        if self.state is not None:
            raise LifecycleError(f"slot {self.slot_id} is {self.state.stage.name}, not DORMANT")
        seed = build_seed(blueprint_id, self.channels).to(self.device)
        self.seed = seed
        self.optimizer = torch.optim.SGD(seed.parameters(), lr=self.lifecycle.seed_lr, momentum=0.9)
        state = SeedState(
            seed_id, blueprint_id, self.slot_id, blend_mode=blend_mode, stage=SeedStage.GERMINATED
        )
        state.params = count_params(seed)
        state.metrics.accuracy_at_germination = val_accuracy
        state.metrics.accuracy_at_stage_start = val_accuracy
        state.metrics.current_val_accuracy = val_accuracy
        state.metrics.best_val_accuracy = val_accuracy
        self.state = state
        self._emit_telemetry(
            ET.SEED_GERMINATED,
            {"params": state.params},
            f"germinated {blueprint_id} ({state.params} params)",
        )
        return state

    def fossilize(self) -> bool:
        """Make a PROBATIONARY seed permanent if gate G3 passes; False (and nothing changes)
        otherwise."""
        state = self.state
        if state is None or state.stage is not SeedStage.PROBATIONARY:
            return False
        if not self._gate_g3(state):
            return False
        self._transition(SeedStage.FOSSILIZED)
        self._emit_telemetry(
            ET.SEED_FOSSILIZED,
            {
                "improvement": state.metrics.accuracy_delta,
                "blending_delta": state.metrics.blending_delta,
                "counterfactual": state.metrics.counterfactual_contribution,
                "params_added": state.params,
            },
            f"fossilized; improvement {state.metrics.accuracy_delta:+.2f} points",
        )
        return True

    def cull(self, reason: str, *, auto_culled: bool = False) -> bool:
        """Remove a live seed; it goes to CULLED, then embargo. False if there is none."""
        state = self.state
        if state is None or not is_active_stage(state.stage):
            return False
        self._transition(SeedStage.CULLED)
        self._emit_telemetry(
            ET.SEED_CULLED,
            {
                "reason": reason,
                "auto_culled": auto_culled,
                "improvement": state.metrics.accuracy_delta,
                "blending_delta": state.metrics.blending_delta,
                "counterfactual": state.metrics.counterfactual_contribution,
            },
            f"culled ({reason}); improvement {state.metrics.accuracy_delta:+.2f} points",
            severity=Severity.WARNING if auto_culled else Severity.INFO,
        )
        self.seed = None
        self.optimizer = None
        state.alpha = 0.0
        self._embargo_left = self.lifecycle.embargo_epochs
        return True

    # -- per-epoch lifecycle ------------------------------------------------------------------

    def end_epoch(
        self,
        val_accuracy: float,
        gradients: dict[str, Any] | None = None,
        counterfactual: float | None = None,
    ) -> None:
        """Advance the lifecycle after an epoch: metrics, gates, alpha, embargo."""
        state = self.state
        if state is None:
            return
        m = state.metrics
        if state.stage is SeedStage.FOSSILIZED:
            m.epochs_in_current_stage += 1
            m.current_val_accuracy = val_accuracy
            return
        if state.stage in (SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING):
            m.epochs_in_current_stage += 1
            self._advance_embargo(state)
            return
        m.record_accuracy(val_accuracy)
        if counterfactual is not None:
            m.counterfactual_contribution = counterfactual
        grads = gradients or {}
        if state.stage is SeedStage.GERMINATED:
            self._gate(state, "G0", SeedStage.TRAINING, self._g0_checks(grads))
        elif state.stage is SeedStage.TRAINING:
            self._advance_training(state, grads)
        elif state.stage is SeedStage.BLENDING:
            self._advance_blending(state)
        elif (
            state.stage is SeedStage.PROBATIONARY
            and state.epochs_in_stage >= self.lifecycle.max_probation_epochs
        ):
            self.cull("probation_timeout", auto_culled=True)

    def _advance_training(self, state: SeedState, grads: dict[str, Any]) -> None:
        if state.epochs_in_stage < self.lifecycle.min_training_epochs:
            return
        if self._gate(state, "G1", SeedStage.BLENDING, self._g1_checks(grads)):
            state.metrics.accuracy_at_blend_start = state.metrics.current_val_accuracy
            state.alpha = 0.0
        elif state.epochs_in_stage >= self.lifecycle.max_training_epochs:
            self.cull("gate_failed", auto_culled=True)

    def _advance_blending(self, state: SeedState) -> None:
        cfg = self.lifecycle
        holding = state.metrics.blending_delta < -cfg.blend_tolerance
        if state.blend_mode is BlendMode.GATED:
            if not holding:
                state.alpha = min(1.0, state.alpha + 1.0 / cfg.blending_epochs)
        else:
            state.alpha = alpha_schedule(
                state.blend_mode, state.epochs_in_stage / cfg.blending_epochs
            )
        if state.alpha >= 1.0 or state.epochs_in_stage >= 2 * cfg.blending_epochs:
            checks = {
                "alpha_complete": state.alpha >= 1.0,
                "accuracy_held": not holding,
            }
            if self._gate(state, "G2", SeedStage.PROBATIONARY, checks):
                state.alpha = 1.0
            else:
                self.cull("blend_regression", auto_culled=True)

    def _advance_embargo(self, state: SeedState) -> None:
        if state.stage is SeedStage.CULLED:
            self._transition(SeedStage.EMBARGOED)
        elif state.stage is SeedStage.EMBARGOED:
            self._embargo_left -= 1
            if self._embargo_left <= 0:
                self._transition(SeedStage.RESETTING)
        else:  # RESETTING
            self._transition(SeedStage.DORMANT)
            self.state = None

    # -- gates ---------------------------------------------------------------------------------

    @staticmethod
    def _g0_checks(grads: dict[str, Any]) -> dict[str, bool]:
        return {"gradients_finite": not grads.get("has_nonfinite", False)}

    @staticmethod
    def _g1_checks(grads: dict[str, Any]) -> dict[str, bool]:
        return {
            "gradients_finite": not grads.get("has_nonfinite", False),
            "not_exploding": not grads.get("has_exploding", False),
            "not_vanishing": not grads.get("has_vanishing", False),
        }

    def _gate_g3(self, state: SeedState) -> bool:
        m = state.metrics
        contribution = (
            m.counterfactual_contribution
            if m.counterfactual_contribution is not None
            else m.accuracy_delta
        )
        checks = {
            "probation_complete": state.epochs_in_stage >= self.lifecycle.probation_epochs,
            "positive_contribution": contribution > 0.0,
        }
        return self._gate(state, "G3", SeedStage.FOSSILIZED, checks, transition=False)

    def _gate(
        self,
        state: SeedState,
        gate: str,
        target: SeedStage,
        checks: dict[str, bool],
        *,
        transition: bool = True,
    ) -> bool:
        passed = all(checks.values())
        self._emit_telemetry(
            ET.SEED_GATE_EVALUATED,
            {
                "gate": gate,
                "passed": passed,
                "target_stage": target.name,
                "checks_passed": [k for k, v in checks.items() if v],
                "checks_failed": [k for k, v in checks.items() if not v],
            },
            f"gate {gate} -> {target.name}: {'passed' if passed else 'failed'}",
        )
        if passed and transition:
            self._transition(target)
        return passed

    def _transition(self, to_stage: SeedStage) -> None:
        state = self.state
        assert state is not None
        from_stage = state.stage
        if not is_valid_transition(from_stage, to_stage):
            raise LifecycleError(
                f"slot {self.slot_id}: invalid transition {from_stage.name} -> {to_stage.name}"
            )
        state.stage = to_stage
        state.metrics.reset_stage_baseline()
        self._emit_telemetry(
            ET.SEED_STAGE_CHANGED,
            {
                "from_stage": from_stage.name,
                "to_stage": to_stage.name,
                "accuracy_delta": state.metrics.accuracy_delta,
                "counterfactual": state.metrics.counterfactual_contribution,
            },
            f"{from_stage.name} -> {to_stage.name}",
        )

    # -- training helpers ----------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [] if self.seed is None else list(self.seed.parameters())

    def zero_grad_seed(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step_seed(self) -> None:
        if self.optimizer is not None and self.state is not None:
            self.optimizer.step()

    # -- telemetry -----------------------------------------------------------------------------

    def _emit_telemetry(
        self,
        event_type: TelemetryEventType,
        data: dict[str, Any] | None = None,
        message: str = "",
        *,
        severity: Severity = Severity.INFO,
    ) -> None:
        """The one way this slot emits: the seed's identity, alpha and epochs (``inner_epoch``
        within the episode, ``global_epoch`` across the run), then ``data`` over them, through
        leyline's guarded path: a failing sink never fails a lifecycle step (it is counted in
        ``telemetry_failures``); a payload that breaks the catalogue raises in strict mode."""
        ctx = self.context
        if self.fast_mode or ctx.fast_mode or not ctx.telemetry.lifecycle or self.state is None:
            return
        sink = self.on_telemetry if self.on_telemetry is not None else ctx.emit
        state = self.state
        data = {
            "env_id": ctx.env_id,
            "device": ctx.device,
            "slot_id": self.slot_id,
            "seed_id": state.seed_id,
            "blueprint_id": state.blueprint_id,
            "alpha": state.alpha,
            "inner_epoch": ctx.inner_epoch,
            "global_epoch": ctx.global_epoch,
            "epochs_total": state.epochs_total,
            "epochs_in_stage": state.epochs_in_stage,
            **(data or {}),
        }
        delivered = emit_event(
            sink,
            event_type,
            data,
            message=message,
            severity=severity,
            seed_id=state.seed_id,
            slot_id=self.slot_id,
            epoch=ctx.inner_epoch,
        )
        self.telemetry_failures += not delivered
