"""NissaHub: the one place events go, and the threads that deliver them.

The training thread only appends to a deque (``emit``). A named daemon thread, the pump, moves
events from that ingress queue to one lane per backend; each lane has its own daemon thread, so a
slow backend (a network exporter, a slow disk) delays only itself. Queues are bounded for
high-rate events: when one is full, new high-rate events are dropped and counted; lifecycle
events (``LIFECYCLE_EVENT_TYPES``) are always queued, so they are never dropped and stay in
order. ``flush`` and ``close`` travel through the queues as markers, so they wait for exactly
the events emitted before them.

Modelled on the OpenTelemetry SDK's batch processor: Event-woken daemon threads, fork handlers
that rebuild locks, queues and threads in the child, and an atexit hook removed on close.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any

from esper.leyline import (
    DEFAULT_BUDGETS,
    LIFECYCLE_EVENT_TYPES,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
)
from esper.nissa._backend import OutputBackend

_log = logging.getLogger("esper.nissa")

_SHUTDOWN_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def block_shutdown_signals() -> set[int | signal.Signals]:
    """Block SIGINT and SIGTERM in the calling thread; returns the previous mask.

    Python runs signal handlers only in the main thread, but the kernel may deliver a signal to
    any thread that does not block it; if a helper thread takes Ctrl-C, a main thread blocked
    in a system call never wakes up to handle it. Threads Esper starts call this first, and
    threads they create inherit the mask.
    """
    return signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)


_REPORT_INTERVAL_SECONDS = 10.0
"""At most one drop or failure warning per this many seconds (plus one at close)."""


class _Marker:
    """A flush or stop request travelling through the queues; done when every lane saw it."""

    __slots__ = ("done", "lock", "remaining", "stop")

    def __init__(self, lanes: int, *, stop: bool = False) -> None:
        self.remaining = lanes
        self.stop = stop
        self.lock = threading.Lock()
        self.done = threading.Event()
        if lanes == 0:
            self.done.set()

    def arrive(self) -> None:
        with self.lock:
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Delivery counts of one backend. delivered + failed + dropped = events the hub took
    in (for this backend's lifetime) plus the hub's own drops."""

    name: str
    delivered: int
    failed: int
    dropped: int
    last_error: str | None
    cpu_seconds: float = 0.0
    """CPU time this backend's delivery thread has used."""
    lost: int = 0
    """Items the backend took but could not keep (its own count: lines, spans)."""


@dataclass(frozen=True, slots=True)
class HubStats:
    """What the hub has seen. ``emitted`` counts every ``emit`` call that reached the pump or
    was dropped at the ingress queue; ``dropped`` is the ingress drops (lost to every backend)."""

    emitted: int
    dropped: int
    by_type: dict[str, int]
    backends: tuple[BackendStats, ...]
    pump_cpu_seconds: float = 0.0

    @property
    def cpu_seconds(self) -> float:
        """CPU time used by the hub's own threads (pump and every lane)."""
        return self.pump_cpu_seconds + sum(b.cpu_seconds for b in self.backends)

    @property
    def total_dropped(self) -> int:
        """Drops anywhere: at the ingress queue or at any backend's queue."""
        return self.dropped + sum(b.dropped for b in self.backends)


class _Lane:
    """One backend's queue and delivery thread."""

    def __init__(self, hub: NissaHub, backend: OutputBackend, capacity: int) -> None:
        self.hub = hub
        self.backend = backend
        self.capacity = capacity
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.reported_failures = 0
        self.cpu_seconds = 0.0
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.queue: deque[TelemetryEvent | _Marker] = deque()
        self.wake = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"esper-nissa-{self.backend.name}"[:60], daemon=True
        )
        self.thread.start()

    def offer(self, event: TelemetryEvent) -> None:
        """Called by the pump thread only."""
        if len(self.queue) >= self.capacity and event.event_type not in LIFECYCLE_EVENT_TYPES:
            self.dropped += 1
        else:
            self.queue.append(event)

    def _failure(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.reported_failures == 0:
            _log.warning("telemetry backend %s failed in %s: %s", self.backend.name, what, exc)
            self.hub._report(
                "backend_failed",
                f"backend {self.backend.name} failed in {what}: {self.last_error}; "
                "other backends and training continue",
            )
        self.reported_failures += 1

    def _run(self) -> None:
        block_shutdown_signals()
        queue, backend = self.queue, self.backend
        while True:
            self.wake.wait()
            self.wake.clear()
            started = time.thread_time()
            try:
                if self._drain(queue, backend):
                    return
            finally:
                self.cpu_seconds += time.thread_time() - started

    def _drain(self, queue: deque[TelemetryEvent | _Marker], backend: OutputBackend) -> bool:
        """Deliver everything queued; True when a stop marker was reached."""
        while queue:
            item = queue.popleft()
            if isinstance(item, _Marker):
                try:
                    backend.flush()
                except Exception as exc:  # noqa: BLE001 - isolate every backend failure
                    self._failure("flush", exc)
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
        try:
            backend.flush()  # idle: make what was delivered visible (files current)
        except Exception as exc:  # noqa: BLE001 - isolate every backend failure
            self._failure("flush", exc)
        return False

    def stats(self) -> BackendStats:
        return BackendStats(
            self.backend.name,
            self.delivered,
            self.failed,
            self.dropped,
            self.last_error,
            self.cpu_seconds,
            self.backend.lost,
        )


_HUBS: weakref.WeakSet[NissaHub] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for hub in list(_HUBS):
        hub._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(ref: weakref.ref[NissaHub]) -> None:
    hub = ref()
    if hub is not None:
        hub.close(timeout=DEFAULT_BUDGETS.shutdown_timeout_seconds * 6)


class NissaHub:
    """Routes events to every backend without ever blocking the caller on I/O.

    ``emit`` appends to a bounded queue and returns. ``flush(timeout)`` waits until every
    event emitted before it is delivered and each backend flushed; ``close(timeout)`` does
    the same and then closes the backends; it is idempotent and also runs at exit.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_BUDGETS.hub_queue_capacity,
        backend_capacity: int = DEFAULT_BUDGETS.backend_queue_capacity,
        schedule_delay: float = 0.05,
        wake_batch: int = 512,
    ) -> None:
        self.run_id: str | None = None
        self._capacity = capacity
        self._backend_capacity = backend_capacity
        self._schedule_delay = schedule_delay
        self._wake_batch = wake_batch
        self._lanes: tuple[_Lane, ...] = ()
        self._closed = False
        self._accepted = 0
        self._dropped = 0
        self._by_type: dict[str, int] = {}
        self._reported_drops = 0
        self._last_report = 0.0
        self._pump_cpu = 0.0
        self._init_runtime()
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        _HUBS.add(self)

    def _init_runtime(self) -> None:
        self._queue: deque[TelemetryEvent | _Marker] = deque()
        self._wake = threading.Event()
        self._drop_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._pump_thread = threading.Thread(
            target=self._pump, name="esper-nissa-pump", daemon=True
        )
        self._pump_thread.start()

    # -- the training thread's side ------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> None:
        """Queue ``event`` for every backend. Never blocks, never raises for a full queue."""
        queue = self._queue
        if self._closed or (
            len(queue) >= self._capacity and event.event_type not in LIFECYCLE_EVENT_TYPES
        ):
            with self._drop_lock:  # only on the overload path
                self._dropped += 1
            return
        queue.append(event)
        if len(queue) >= self._wake_batch:
            self._wake.set()

    # -- configuration -------------------------------------------------------------------------

    @property
    def backends(self) -> tuple[OutputBackend, ...]:
        return tuple(lane.backend for lane in self._lanes)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_backend(self, backend: OutputBackend) -> None:
        """Deliver every event emitted from now on to ``backend`` as well."""
        with self._config_lock:
            if self._closed:
                raise RuntimeError("add_backend on a closed NissaHub")
            # Copy-on-write: the pump iterates the old tuple without a lock.
            self._lanes = (*self._lanes, _Lane(self, backend, self._backend_capacity))

    def remove_backend(self, backend: OutputBackend, timeout: float | None = None) -> None:
        """Deliver what is queued for ``backend``, stop delivering to it, and leave it open."""
        self.flush(timeout)
        with self._config_lock:
            lanes = [lane for lane in self._lanes if lane.backend is backend]
            self._lanes = tuple(lane for lane in self._lanes if lane.backend is not backend)
        for lane in lanes:
            lane.queue.append(_Marker(1, stop=True))
            lane.wake.set()
            lane.thread.join(timeout)

    # -- delivery (pump thread) ----------------------------------------------------------------

    def _pump(self) -> None:
        block_shutdown_signals()
        while True:
            self._wake.wait(self._schedule_delay)
            self._wake.clear()
            started = time.thread_time()
            stopped = self._pump_once()
            self._pump_cpu += time.thread_time() - started
            if stopped:
                return

    def _pump_once(self) -> bool:
        """Move everything queued to the lanes. True when a stop marker was forwarded."""
        queue, by_type = self._queue, self._by_type
        stopped = False
        lanes = self._lanes
        moved = False
        while queue:
            item = queue.popleft()
            moved = True
            if isinstance(item, _Marker):
                lanes = self._lanes  # a marker waits for the lanes that exist now
                item.remaining = len(lanes)
                if not lanes:
                    item.done.set()
                for lane in lanes:
                    lane.queue.append(item)
                stopped = stopped or item.stop
                continue
            if item.run_id is None:
                item.run_id = self.run_id
            self._accepted += 1
            name = item.event_type.name
            by_type[name] = by_type.get(name, 0) + 1
            for lane in lanes:
                lane.offer(item)
        if moved:
            for lane in lanes:
                lane.wake.set()
        self._maybe_report_drops(force=False)
        return stopped

    def _maybe_report_drops(self, *, force: bool) -> None:
        with self._report_lock:  # the pump and close() may both report
            total = self._dropped + sum(lane.dropped for lane in self._lanes)
            if total == self._reported_drops:
                return
            now = time.monotonic()
            if not force and now - self._last_report < _REPORT_INTERVAL_SECONDS:
                return
            self._last_report = now
            new = total - self._reported_drops
            self._reported_drops = total
        self._report(
            "events_dropped",
            f"{new} high-rate events dropped since the last report ({total} in all); "
            "lifecycle events are never dropped",
        )

    def _report(self, reason: str, detail: str) -> None:
        """Emit a TELEMETRY_WARNING about the telemetry itself (lifecycle: never dropped)."""
        event = TelemetryEvent(
            event_type=TelemetryEventType.TELEMETRY_WARNING,
            message=detail,
            data={"reason": reason, "detail": detail},
            severity=Severity.WARNING,
        )
        self._queue.append(event)  # bypasses the closed check: close drains after reporting

    # -- flush and close -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted before this call is delivered and every backend
        flushed. Returns False if ``timeout`` seconds passed first."""
        marker = _Marker(len(self._lanes))
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Deliver everything queued, then close every backend. Idempotent.

        Returns False when ``timeout`` ran out first; backends whose lane had not finished
        are then left open rather than closed under their delivery thread.
        """
        with self._config_lock:
            if self._closed:
                return True
            self._closed = True
        atexit.unregister(self._atexit)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        self.flush(timeout)  # lets lanes count their last drops before the final report
        self._maybe_report_drops(force=True)
        stop = _Marker(len(self._lanes), stop=True)
        self._queue.append(stop)
        self._wake.set()
        finished = stop.done.wait(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )
        for lane in self._lanes:
            lane.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if lane.thread.is_alive():
                _log.warning("telemetry backend %s did not finish in time", lane.backend.name)
                continue
            try:
                lane.backend.close()
            except Exception as exc:  # noqa: BLE001 - one backend's close must not stop others
                _log.warning("closing telemetry backend %s failed: %s", lane.backend.name, exc)
                lane.last_error = f"{type(exc).__name__}: {exc}"
        return finished

    def stats(self) -> HubStats:
        """Counts so far (cheap; safe to call from any thread)."""
        return HubStats(
            emitted=self._accepted + self._dropped,
            dropped=self._dropped,
            by_type=self._by_type.copy(),  # dict.copy is atomic under the GIL
            backends=tuple(lane.stats() for lane in self._lanes),
            pump_cpu_seconds=self._pump_cpu,
        )

    # -- fork ----------------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        # Threads do not survive fork and locks may be held by them: rebuild everything. Events
        # queued in the parent are the parent's to deliver.
        self._init_runtime()
        for lane in self._lanes:
            lane._init_runtime()


_GLOBAL_LOCK = threading.Lock()
_GLOBAL_HUB: NissaHub | None = None


def get_hub() -> NissaHub:
    """The process-wide hub, created on first use (and anew after it was closed)."""
    global _GLOBAL_HUB  # noqa: PLW0603 - the process-wide hub is deliberately global
    hub = _GLOBAL_HUB
    if hub is None or hub.closed:
        with _GLOBAL_LOCK:
            if _GLOBAL_HUB is None or _GLOBAL_HUB.closed:
                _GLOBAL_HUB = NissaHub()
            hub = _GLOBAL_HUB
    return hub


def emit(event: TelemetryEvent) -> None:
    """Emit ``event`` on the process-wide hub."""
    get_hub().emit(event)


def reset_hub(timeout: float | None = None) -> None:
    """Close the process-wide hub (delivering what it holds) and forget it."""
    global _GLOBAL_HUB
    with _GLOBAL_LOCK:
        hub, _GLOBAL_HUB = _GLOBAL_HUB, None
    if hub is not None:
        hub.close(timeout)


def install_signal_handlers() -> None:
    """Make SIGTERM unwind the main thread like Ctrl-C does, so ``finally`` blocks and the
    atexit hook close the hub and deliver what is queued. Call from the main thread of a
    command-line program; libraries should not take over signals."""

    def _terminate(signum: int, frame: FrameType | None) -> Any:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    # A process started while its parent's thread blocked these signals inherits the block:
    # the thread that handles them must receive them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
