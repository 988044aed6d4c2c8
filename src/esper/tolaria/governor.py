"""TolariaGovernor: notices a training run going bad and puts it back where it was good.

After every healthy epoch it snapshots the host (and fossilized seeds). A NaN or infinite
training loss, or a loss far above its recent history (divergence), is a panic: the governor
culls the live seeds (their state is what changed), restores the snapshot, clears the
optimizer's momentum, and emits GOVERNOR_ROLLBACK with the env and device.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch

from esper.kasmina import HostCNN
from esper.leyline import Severity, TelemetryEventType, make_event

_log = logging.getLogger("esper.tolaria")


@dataclass(slots=True)
class GovernorConfig:
    sensitivity: float = 6.0
    """Standard deviations above the recent mean that count as divergence."""
    multiplier: float = 3.0
    """...and the loss must also exceed this multiple of the recent mean."""
    min_margin: float = 1.0
    """...and exceed the recent mean by at least this much: late in training the loss is
    tiny, and a multiple of a tiny number is a normal fluctuation, not divergence."""
    history: int = 8
    min_history: int = 3


class TolariaGovernor:
    """Watches one model's training loss and rolls back on NaN, Inf or divergence."""

    def __init__(self, model: HostCNN, config: GovernorConfig | None = None) -> None:
        self.model = model
        self.config = config or GovernorConfig()
        self.losses: deque[float] = deque(maxlen=self.config.history)
        self.consecutive_panics = 0
        self.rollbacks = 0
        self._snapshot: dict[str, torch.Tensor] | None = None
        self.snapshot()

    def _live_seed_prefixes(self) -> tuple[str, ...]:
        return tuple(f"slots.{s.slot_id}.seed." for s in self.model.seed_slots() if s.has_live_seed)

    def snapshot(self) -> None:
        """Remember the current host (and fossilized seeds) as the last good state."""
        live = self._live_seed_prefixes()
        self._snapshot = {
            k: v.detach().clone()
            for k, v in self.model.state_dict().items()
            if not k.startswith(live)
        }

    def threshold(self) -> float:
        """The loss above which an epoch counts as divergent (inf until enough history)."""
        if len(self.losses) < self.config.min_history:
            return math.inf
        mean = statistics.fmean(self.losses)
        std = statistics.pstdev(self.losses)
        c = self.config
        return max(mean + c.sensitivity * std, c.multiplier * mean, mean + c.min_margin)

    def check(self, train_loss: float) -> str | None:
        """Judge an epoch's loss: the panic reason, or None (and a fresh snapshot) if healthy."""
        if math.isnan(train_loss):
            return "nan_loss"
        if math.isinf(train_loss):
            return "inf_loss"
        if train_loss > self.threshold():
            return "divergence"
        self.losses.append(train_loss)
        self.consecutive_panics = 0
        self.snapshot()
        return None

    def execute_rollback(
        self, reason: str, loss_at_panic: float, optimizer: torch.optim.Optimizer
    ) -> int:
        """Cull live seeds, restore the last good state, clear optimizer momentum, emit
        GOVERNOR_ROLLBACK. Returns the number of seeds culled."""
        self.consecutive_panics += 1
        self.rollbacks += 1
        threshold = self.threshold()
        culled = sum(slot.cull("rollback", auto_culled=True) for slot in self.model.seed_slots())
        assert self._snapshot is not None
        self.model.load_state_dict(self._snapshot, strict=False)
        optimizer.state.clear()
        ctx = self.model.context
        if ctx.fast_mode or not ctx.telemetry.lifecycle:
            return culled
        try:
            ctx.emit(
                make_event(
                    TelemetryEventType.GOVERNOR_ROLLBACK,
                    {
                        "env_id": ctx.env_id,
                        "device": ctx.device,
                        "reason": reason,
                        "loss_at_panic": loss_at_panic,
                        "loss_threshold": threshold,
                        "consecutive_panics": self.consecutive_panics,
                        "seeds_culled": culled,
                    },
                    message=f"rolled back env {ctx.env_id} on {reason} (loss {loss_at_panic})",
                    severity=Severity.ERROR,
                    epoch=ctx.inner_epoch,
                )
            )
        except Exception:  # noqa: BLE001 - a rollback must complete even if telemetry fails
            _log.warning("GOVERNOR_ROLLBACK telemetry failed", exc_info=True)
        return culled
