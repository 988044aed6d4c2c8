"""What the hub has seen and what each backend kept: the counts a run's verdict is made of."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Delivery counts of one backend; ``emitted = delivered + failed + dropped + pending``."""

    name: str
    delivered: int
    failed: int
    dropped: int
    last_error: str | None
    cpu_seconds: float = 0.0
    """CPU time this backend's delivery thread has used."""
    lost: int = 0
    """Items the backend took but could not keep (its own count: lines, spans)."""
    emitted: int = 0
    """Events emitted while this backend was attached (including the hub's drops)."""
    pending: int = 0
    """Events queued but not delivered yet; after close, those the deadline left behind."""
    closed: bool = False
    dropped_at_hub: int = 0
    """The part of ``dropped`` that the hub's ingress queue dropped while this was attached."""

    @property
    def not_kept(self) -> int:
        """Events this backend was sent and does not hold: dropped, failed, undelivered, lost."""
        return self.dropped + self.failed + self.pending + self.lost


@dataclass(frozen=True, slots=True)
class HubStats:
    """What the hub has seen: ``emitted = accepted + dropped + late``."""

    emitted: int
    dropped: int
    """Events dropped at the ingress queue (lost to every backend)."""
    by_type: dict[str, int]
    backends: tuple[BackendStats, ...]
    pump_cpu_seconds: float = 0.0
    late: int = 0
    """Events emitted after close (never delivered, counted here)."""
    invalid: int = 0
    """Events delivered whose payload does not match the catalogue (checked by the pump)."""
    invalid_examples: tuple[str, ...] = ()
    """What was wrong, for the first mismatch of each event type."""
    unrouted: int = 0
    """Events accepted while no backend was attached (nobody asked to keep them), such as
    the hub's last warning after every backend had closed."""

    @property
    def accepted(self) -> int:
        return self.emitted - self.dropped - self.late

    @property
    def cpu_seconds(self) -> float:
        """CPU time used by the hub's own threads (pump and every lane)."""
        return self.pump_cpu_seconds + sum(b.cpu_seconds for b in self.backends)

    @property
    def total_dropped(self) -> int:
        """Drops anywhere: at the ingress queue or at any backend's own queue."""
        return self.dropped + sum(b.dropped - b.dropped_at_hub for b in self.backends)

    @property
    def complete(self) -> bool:
        """True when every event emitted was kept by every backend it was sent to."""
        return self.dropped == 0 and self.late == 0 and all(b.not_kept == 0 for b in self.backends)

    def dropped_by_backend(self) -> dict[str, int]:
        """Drops by where they happened: ``hub`` (the ingress queue, before any backend) and
        each backend's own queue; as ``esper_telemetry_events_dropped_total{backend}``."""
        return {"hub": self.dropped,
                **{b.name: b.dropped - b.dropped_at_hub for b in self.backends}}  # fmt: skip

    def lost_by_backend(self) -> dict[str, int]:
        """Items each backend took but could not keep; ``esper_telemetry_backend_lost_total``."""
        return {b.name: b.lost for b in self.backends}
