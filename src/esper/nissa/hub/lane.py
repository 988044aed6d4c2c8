"""One backend's queue and delivery thread (a lane), and the items the hub's queues carry
besides events (flush markers, add/remove/close controls, the pump's stop)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from esper.leyline import LIFECYCLE_EVENT_TYPES, TelemetryEvent
from esper.nissa.hub.backend import Backend, accepts_timeout, backend_lost, backend_name
from esper.nissa.hub.signals import start_daemon_thread
from esper.nissa.hub.stats import BackendStats

if TYPE_CHECKING:
    from esper.nissa.hub.hub import NissaHub

_log = logging.getLogger("esper.nissa")


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Internal:
    """Items the queues carry besides events."""

    __slots__ = ()


class _Marker(_Internal):
    """A flush or stop request travelling through the queues; done when every lane saw it.

    ``stop``: the lane flushes, closes its backend if ``close_backend``, and ends.
    """

    __slots__ = ("close_backend", "deadline", "done", "lock", "remaining", "stop")

    def __init__(
        self, deadline: float | None, *, stop: bool = False, close_backend: bool = False
    ) -> None:
        self.remaining = 0
        self.stop = stop
        self.close_backend = close_backend
        self.deadline = deadline
        self.lock = threading.Lock()
        self.done = threading.Event()

    def expect(self, lanes: int) -> None:
        self.remaining = lanes
        if lanes == 0:
            self.done.set()

    def arrive(self) -> None:
        with self.lock:
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()


class _Control(_Internal):
    """Add a lane to, or take one out of, the pump's routing, at this point of the stream.
    A lane taken out is sent ``marker`` (a stop) as its last item."""

    __slots__ = ("lane", "marker")

    def __init__(self, lane: _Lane, marker: _Marker | None = None) -> None:
        self.lane = lane
        self.marker = marker


class _PumpStop(_Internal):
    __slots__ = ()


class _Lane:
    """One backend's queue and delivery thread."""

    def __init__(self, hub: NissaHub, backend: Backend, capacity: int) -> None:
        self.hub = hub
        self.backend = backend
        self.name = backend_name(backend)
        self.capacity = capacity
        self.offered = 0  # pump thread only
        self.dropped = 0  # pump thread only
        self.hub_dropped = 0  # under the hub's config lock
        self.delivered = 0  # lane thread only
        self.failed = 0  # lane thread only
        self.closed = False
        self.last_error: str | None = None
        self.reported_failures = 0
        self.cpu_seconds = 0.0
        self._flush_timeout = accepts_timeout(backend.flush)
        self._close_timeout = accepts_timeout(backend.close)
        self.queue: deque[TelemetryEvent | _Marker] = deque()
        self.wake = threading.Event()
        self.thread = start_daemon_thread(self._run, f"esper-nissa-{self.name}")

    def offer(self, event: TelemetryEvent) -> None:
        """Called by the pump thread only."""
        self.offered += 1
        if len(self.queue) >= self.capacity and event.event_type not in LIFECYCLE_EVENT_TYPES:
            self.dropped += 1
        else:
            self.queue.append(event)

    def _failure(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.reported_failures == 0:
            _log.warning("telemetry backend %s failed in %s: %s", self.name, what, exc)
            self.hub._report(
                "backend_failed",
                f"backend {self.name} failed in {what}: {self.last_error}; "
                "other backends and training continue",
            )
        self.reported_failures += 1

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            started = time.thread_time()
            try:
                if self._drain():
                    return
            finally:
                self.cpu_seconds += time.thread_time() - started

    def _call(self, what: str, takes_timeout: bool, deadline: float | None) -> None:
        method = getattr(self.backend, what)
        try:
            if takes_timeout:
                method(timeout=_remaining(deadline))
            else:
                method()
        except Exception as exc:  # noqa: BLE001 - isolate every backend failure
            self._failure(what, exc)

    def _drain(self) -> bool:
        """Deliver everything queued; True when a stop marker was reached."""
        queue, backend = self.queue, self.backend
        while queue:
            item = queue.popleft()
            if isinstance(item, _Marker):
                self._call("flush", self._flush_timeout, item.deadline)
                if item.stop and item.close_backend:
                    self._call("close", self._close_timeout, item.deadline)
                    self.closed = True
                item.arrive()
                if item.stop:
                    return True
                continue
            try:
                backend.emit(item)
                self.delivered += 1
            except Exception as exc:  # noqa: BLE001 - isolate every backend failure
                self.failed += 1
                self._failure("emit", exc)
        self._call("flush", False, None)  # idle: make what was delivered visible
        return False

    def stats(self) -> BackendStats:
        delivered, failed, dropped = self.delivered, self.failed, self.dropped
        offered = self.offered
        return BackendStats(
            name=self.name,
            delivered=delivered,
            failed=failed,
            dropped=dropped + self.hub_dropped,
            last_error=self.last_error,
            cpu_seconds=self.cpu_seconds,
            lost=backend_lost(self.backend),
            emitted=offered + self.hub_dropped,
            pending=max(0, offered - delivered - failed - dropped),
            closed=self.closed,
            dropped_at_hub=self.hub_dropped,
        )
