"""TelemetryConfig: which events training emits, from the level and lifecycle-only flag."""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline._events import TelemetryLevel


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What training emits. ``lifecycle_only`` keeps slot lifecycle events on even when the
    level is OFF (a cheap record of what seeds did, without analytics)."""

    level: TelemetryLevel = TelemetryLevel.NORMAL
    lifecycle_only: bool = False

    @property
    def lifecycle(self) -> bool:
        """Seed, rollback, checkpoint and run start/end events."""
        return self.level >= TelemetryLevel.MINIMAL or self.lifecycle_only

    @property
    def analytics(self) -> bool:
        """Per-epoch and per-batch analytics (EPOCH_COMPLETED, PPO vitals, throughput, ...)."""
        return self.level >= TelemetryLevel.NORMAL

    @property
    def debug(self) -> bool:
        """Per-step decisions and reward breakdowns."""
        return self.level >= TelemetryLevel.DEBUG
