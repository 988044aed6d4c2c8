"""ConsoleOutput: a human-readable line per important event."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from esper.leyline import LIFECYCLE_EVENT_TYPES, Severity, TelemetryEvent, TelemetryEventType
from esper.nissa.hub.backend import OutputBackend

_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


def format_event(event: TelemetryEvent) -> str:
    """One line: time, type, where it happened, and the message."""
    where = " ".join(
        f"{k}={v}"
        for k, v in (
            ("env", event.data.get("env_id")),
            ("slot", event.slot_id),
            ("seed", event.seed_id),
            ("epoch", event.epoch),
        )
        if v is not None
    )
    parts = [f"{event.timestamp:%H:%M:%S}", event.event_type.name, where, event.message]
    return " ".join(p for p in parts if p)


class ConsoleOutput(OutputBackend):
    """Prints lifecycle events, and any event at ``min_severity`` or above, to a stream.

    High-rate analytics are left out by default: a console that scrolls 1,000 lines a second
    shows nothing. Pass ``event_types`` to choose exactly which types print.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        event_types: Iterable[TelemetryEventType] | None = None,
        min_severity: Severity = Severity.WARNING,
    ) -> None:
        self._stream = stream
        self._types = frozenset(LIFECYCLE_EVENT_TYPES if event_types is None else event_types)
        self._min_rank = _SEVERITY_RANK[min_severity]

    def emit(self, event: TelemetryEvent) -> None:
        if event.event_type in self._types or _SEVERITY_RANK[event.severity] >= self._min_rank:
            print(format_event(event), file=self._stream or sys.stderr)

    def flush(self) -> None:
        (self._stream or sys.stderr).flush()
