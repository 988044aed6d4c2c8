"""OutputBackend: what the hub delivers events to."""

from __future__ import annotations

from abc import ABC, abstractmethod

from esper.leyline import TelemetryEvent


class OutputBackend(ABC):
    """A destination for telemetry events.

    The hub calls ``emit`` and ``flush`` from its delivery thread for this backend, one call at
    a time, and ``close`` once after the last delivery. ``close`` must be idempotent. A backend
    may raise from ``emit`` or ``flush``: the hub counts the failure, reports it once, and keeps
    delivering to every other backend.
    """

    @property
    def name(self) -> str:
        """A short name for stats, metrics and error messages."""
        return type(self).__name__

    @abstractmethod
    def emit(self, event: TelemetryEvent) -> None:
        """Take one event."""

    @property
    def lost(self) -> int:
        """Items this backend accepted but could not keep (a full disk, a dead collector)."""
        return 0

    def flush(self) -> None:  # noqa: B027 - most backends have nothing to flush
        """Make everything taken so far durable or visible."""

    def close(self) -> None:
        """Flush and release resources. A second call does nothing."""
        self.flush()
