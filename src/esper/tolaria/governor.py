"""TolariaGovernor: notices a training run going bad and puts it back where it was good.

After every healthy epoch it snapshots the host (and fossilized seeds). A NaN or infinite
training loss, or a loss far above its recent history (divergence), is a panic: the governor
culls the live seeds (their state is what changed), restores the snapshot, clears the
optimizer's momentum, and emits GOVERNOR_ROLLBACK with the env and device.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from esper.kasmina import HostCNN
from esper.leyline import Severity, TelemetryEvent, TelemetryEventType, emit_event
from esper.nissa import get_hub


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
    spike_mads: float = 5.0
    """A loss spike jumps above the median of the last three losses by more than this many
    median absolute deviations of the history's epoch-to-epoch steps (in log space, scaled by
    1.4826 so one is a standard deviation for normal noise)..."""
    spike_fraction: float = 0.5
    """...and by more than this fraction: a steady loss has steps near zero, and its wiggle
    is no spike."""


class TolariaGovernor:
    """Watches one model's training loss and rolls back on NaN, Inf or divergence.

    ``snapshot()`` remembers the model as good (the env takes one when it builds the model;
    ``check`` takes one after every healthy epoch) in ``last_good_state``. Rollback events go
    to ``emit`` (the env passes its own, which honours the telemetry level), or, when none is
    given, to the process hub.
    """

    def __init__(
        self,
        model: HostCNN,
        config: GovernorConfig | None = None,
        *,
        env_id: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
        emit: Callable[[TelemetryEvent], None] | None = None,
    ) -> None:
        self.model = model
        self.config = config or GovernorConfig()
        self.env_id = env_id
        self.optimizer = optimizer
        self.emit = emit
        self.losses: deque[float] = deque(maxlen=self.config.history)
        self.consecutive_panics = 0
        self.rollbacks = 0
        self.last_good_state: dict[str, torch.Tensor] | None = None
        self.last_panic: tuple[str, float] | None = None
        """(reason, loss) of the latest panic ``check`` found."""
        self.last_spike: tuple[float, float] | None = None
        """(loss, band) when the epoch ``check`` judged last was a loss spike, else None."""

    def snapshot(self) -> None:
        """Remember the current host (and fossilized seeds) as the last good state."""
        live = self.model.live_seed_prefixes()
        self.last_good_state = {
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

    def spike_band(self) -> float:
        """The loss above which a healthy epoch is a spike (inf until enough history).

        Measured against the recent level (the median of the last three losses), not the
        whole history: early in training the loss falls fast, and a band around the history's
        median would hide a spike under the fall. The allowed jump is robust: median absolute
        deviation of the log-steps between epochs, which one spike cannot inflate."""
        c = self.config
        if len(self.losses) < c.min_history:
            return math.inf
        losses = list(self.losses)
        recent = statistics.median(losses[-3:])
        logs = [math.log(max(x, 1e-12)) for x in losses]
        steps = [b - a for a, b in itertools.pairwise(logs)]
        middle = statistics.median(steps)
        mad = statistics.median(abs(s - middle) for s in steps)
        return recent * math.exp(max(c.spike_mads * 1.4826 * mad, math.log1p(c.spike_fraction)))

    def check(self, train_loss: float) -> str | None:
        """Judge an epoch's loss: the panic reason, or None (and a fresh snapshot) if healthy.
        A healthy loss above the spike band is noted in ``last_spike``."""
        self.last_spike = None
        if math.isnan(train_loss):
            reason = "nan_loss"
        elif math.isinf(train_loss):
            reason = "inf_loss"
        elif train_loss > self.threshold():
            reason = "divergence"
        else:
            band = self.spike_band()
            if train_loss > band:
                self.last_spike = (train_loss, band)
            self.losses.append(train_loss)
            self.consecutive_panics = 0
            self.snapshot()
            return None
        self.last_panic = (reason, train_loss)
        return reason

    def execute_rollback(
        self,
        reason: str | None = None,
        loss_at_panic: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        env_id: int | None = None,
    ) -> int:
        """Cull live seeds, restore the last good state, clear the optimizer's momentum and
        emit GOVERNOR_ROLLBACK with the env and the model's device. Without arguments it rolls
        back for the latest panic ``check`` found ("manual" if none), with the governor's own
        optimizer and env. Returns the number of seeds culled."""
        if self.last_good_state is None:
            raise RuntimeError("the governor has no good state to roll back to: call snapshot()")
        last_reason, last_loss = self.last_panic or ("manual", math.nan)
        reason = reason or last_reason
        loss_at_panic = last_loss if loss_at_panic is None else loss_at_panic
        optimizer = optimizer or self.optimizer
        env_id = self.env_id if env_id is None else env_id
        self.consecutive_panics += 1
        self.rollbacks += 1
        threshold = self.threshold()
        device = str(next(iter(self.model.parameters())).device)
        culled = self.model.cull_live_seeds("rollback")
        restored = {k: v.to(device) for k, v in self.last_good_state.items()}
        self.model.load_state_dict(restored, strict=False)
        if optimizer is not None:
            optimizer.state.clear()
        emit_event(  # guarded: a failing sink never stops the rollback (it is counted)
            self.emit if self.emit is not None else get_hub().emit,
            TelemetryEventType.GOVERNOR_ROLLBACK,
            {
                "env_id": env_id,
                "device": device,
                "reason": reason,
                "loss_at_panic": loss_at_panic,
                "loss_threshold": threshold,
                "consecutive_panics": self.consecutive_panics,
                "seeds_culled": culled,
            },
            message=f"rolled back env {env_id} on {reason} (loss {loss_at_panic})",
            severity=Severity.ERROR,
        )
        return culled
