"""Test doubles for users' tests and ours: an in-memory backend and a capture helper."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.hub.backend import OutputBackend
from esper.nissa.hub.fork import register_fork_resource
from esper.nissa.hub.hub import NissaHub, get_hub


class InMemoryOutput(OutputBackend):
    """Keeps delivered events in memory (the last ``maxlen`` if given)."""

    def __init__(self, maxlen: int | None = None) -> None:
        self._events: deque[TelemetryEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.flushes = 0
        self.closed = False
        register_fork_resource(self)

    def _reinit_after_fork(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: TelemetryEvent) -> None:
        with self._lock:
            self._events.append(event)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[TelemetryEvent]:
        """A copy of the events received, oldest first."""
        with self._lock:
            return list(self._events)

    def of_type(self, event_type: TelemetryEventType) -> list[TelemetryEvent]:
        """The events received of one type, oldest first."""
        return [e for e in self.events if e.event_type is event_type]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


@contextmanager
def capture_events(hub: NissaHub | None = None) -> Iterator[InMemoryOutput]:
    """Attach an InMemoryOutput to ``hub`` (default: the process-wide hub) for the block.

    On exit the hub is flushed, so every event emitted inside the block is in ``.events``.
    """
    target = hub if hub is not None else get_hub()
    output = InMemoryOutput()
    target.add_backend(output)
    try:
        yield output
    finally:
        target.flush()
        target.remove_backend(output)
