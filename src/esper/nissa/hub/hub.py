"""NissaHub: the one place events go, and the threads that deliver them.

The training thread only appends to a deque (``emit``). A named daemon thread, the pump, moves
events from that ingress queue to one lane per backend; each lane has its own daemon thread, so a
slow backend (a network exporter, a slow disk) delays only itself. Queues are bounded for
high-rate events: when one is full, new high-rate events are dropped and counted; lifecycle
events (``LIFECYCLE_EVENT_TYPES``) are always queued, so they are never dropped and stay in
order.

Everything that changes what a backend sees travels through the ingress queue in order with the
events: adding or removing a backend, a flush, a stop. So an event emitted after
``add_backend(b)`` returned reaches ``b``; one emitted before ``remove_backend(b)`` was called
reaches it too; ``flush`` waits for exactly the events emitted before it.

The accounting is exact by construction. For the hub and, at any quiescent point and after
``close()``, for every backend::

    emitted = delivered + failed + dropped + pending          (per backend)
    emitted = accepted + dropped + late                       (the hub)

``pending`` is what is still queued (after ``close``: what the deadline left undelivered);
``late`` counts events that arrived after ``close``. Counters only go up.

Modelled on the OpenTelemetry SDK's batch processor: Event-woken daemon threads, membership
re-read for every event, one deadline from ``flush(timeout)`` / ``close(timeout)`` passed down
to every backend, fork handlers that rebuild locks, queues and threads in the child (a closed
hub stays closed), and an atexit hook removed on close.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
import weakref
from collections import deque
from multiprocessing import util as mp_util

from esper.leyline import (
    DEFAULT_BUDGETS,
    LIFECYCLE_EVENT_TYPES,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
    payload_problem,
)
from esper.nissa.hub.backend import (
    Backend,
    backend_name,
    check_backend,
)
from esper.nissa.hub.fork import register_fork_hub
from esper.nissa.hub.lane import _Control, _Internal, _Lane, _Marker, _PumpStop, _remaining
from esper.nissa.hub.signals import start_daemon_thread
from esper.nissa.hub.stats import BackendStats, HubStats

_log = logging.getLogger("esper.nissa")

_FLUSH_ROUNDS = 4
"""At most this many marker rounds per flush (see ``NissaHub._flush_rounds``)."""

_REPORT_INTERVAL_SECONDS = 10.0
"""At most one drop or loss warning per this many seconds (plus the ones at close)."""


def _close_at_exit(ref: weakref.ref[NissaHub]) -> None:
    hub = ref()
    if hub is not None:
        hub.close(timeout=DEFAULT_BUDGETS.shutdown_timeout_seconds * 6)


class NissaHub:
    """Routes events to every backend without ever blocking the caller on I/O.

    ``emit`` appends to a bounded queue and returns. ``flush(timeout)`` waits until every
    event emitted before it is delivered and each backend flushed; ``close(timeout)`` does
    the same and then closes the backends, one after another in the order they were added,
    so a loss one backend reveals as it closes is reported to those still open. It is
    idempotent (a second call waits for the first) and also runs at exit.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_BUDGETS.hub_queue_capacity,
        backend_capacity: int = DEFAULT_BUDGETS.backend_queue_capacity,
        schedule_delay: float = 0.05,
        wake_batch: int = 512,
        check_payloads: bool = True,
    ) -> None:
        """``check_payloads``: the pump checks every event's payload against the catalogue
        (off the training thread) and counts mismatches; events are delivered either way."""
        self.run_id: str | None = None
        self.rank: int | None = None
        """This process's rank in a multi-process run: stamped on every event (None: one
        process)."""
        self.check_payloads = check_payloads
        self._capacity = capacity
        self._backend_capacity = backend_capacity
        self._schedule_delay = schedule_delay
        self._wake_batch = wake_batch
        self._closed = False
        self._close_ok = True
        self._init_runtime()
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)
        register_fork_hub(self)
        mp_util.register_after_fork(self, NissaHub._close_at_multiprocessing_exit)

    def _init_runtime(self) -> None:
        self._queue: deque[TelemetryEvent | _Internal] = deque()
        self._wake = threading.Event()
        self._config_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._close_done = threading.Event()
        self._configured: tuple[_Lane, ...] = ()  # what add/remove have asked for
        self._active: tuple[_Lane, ...] = ()  # what the pump routes to (pump thread)
        self._accepted = 0
        self._dropped = 0
        self._late = 0
        self._invalid = 0
        self._unrouted = 0
        self._invalid_examples: dict[str, str] = {}
        self._by_type: dict[str, int] = {}
        self._reported_drops = 0
        self._reported_lost = 0
        self._reports = 0
        self._last_report = 0.0
        self._pump_cpu = 0.0
        self._pump_stopped = self._closed
        self._pump_thread: threading.Thread | None = None
        if self._closed:
            self._close_done.set()
            return
        self._pump_thread = start_daemon_thread(self._pump, "esper-nissa-pump")

    # -- the training thread's side ------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> None:
        """Queue ``event`` for every backend. Never blocks, never raises for a full queue."""
        queue = self._queue
        if self._closed or (
            len(queue) >= self._capacity and event.event_type not in LIFECYCLE_EVENT_TYPES
        ):
            self._refuse()
            return
        # An emit that passed the check while close() ran lands behind the pump's stop and is
        # counted as late by stats() (it is still in the queue).
        queue.append(event)
        if len(queue) >= self._wake_batch:
            self._wake.set()

    def _refuse(self) -> None:
        with self._config_lock:  # the slow path only: overload or after close
            if self._closed:
                self._late += 1
                return
            self._dropped += 1
            for lane in self._configured:
                lane.hub_dropped += 1

    # -- configuration -------------------------------------------------------------------------

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(lane.backend for lane in self._configured)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def safe_burst(self) -> int:
        """How many events may be emitted back to back, with nothing delivered meanwhile,
        before any queue (the hub's or a backend's) could fill: half the smallest."""
        return max(1, min(self._capacity, self._backend_capacity) // 2)

    @property
    def ingress_depth(self) -> int:
        """Items waiting for the pump (events not yet routed to any backend)."""
        return len(self._queue)

    def add_backend(self, backend: Backend) -> None:
        """Deliver every event emitted from now on to ``backend`` as well.

        Any object with ``emit``, ``flush`` and ``close`` will do (see ``Backend``).
        """
        check_backend(backend)
        with self._config_lock:
            if self._closed:
                raise RuntimeError("add_backend on a closed NissaHub")
            if any(lane.backend is backend for lane in self._configured):
                raise ValueError(f"backend {backend_name(backend)} is already attached")
            lane = _Lane(self, backend, self._backend_capacity)
            self._configured = (*self._configured, lane)
            self._queue.append(_Control(lane))
        self._wake.set()

    def remove_backend(self, backend: Backend, timeout: float | None = None) -> BackendStats | None:
        """Deliver what was emitted before this call to ``backend``, stop delivering to it, and
        leave it open. Returns its final stats (None if it was not attached)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._config_lock:
            lane = next((ln for ln in self._configured if ln.backend is backend), None)
            if lane is None or self._closed:
                return None if lane is None else lane.stats()
            self._configured = tuple(ln for ln in self._configured if ln is not lane)
            marker = _Marker(deadline, stop=True)
            self._queue.append(_Control(lane, marker))
        self._wake.set()
        if marker.done.wait(_remaining(deadline)):
            lane.thread.join(_remaining(deadline))
        return lane.stats()

    # -- delivery (pump thread) ----------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            self._wake.wait(self._schedule_delay)
            self._wake.clear()
            started = time.thread_time()
            stopped = self._pump_once()
            self._pump_cpu += time.thread_time() - started
            if stopped:
                return

    def _pump_once(self) -> bool:
        """Move everything queued to the lanes. True when the pump's stop was reached."""
        queue, by_type = self._queue, self._by_type
        check = self.check_payloads
        touched: list[_Lane] = []
        stopped = False
        while queue:
            item = queue.popleft()
            if isinstance(item, _Internal):
                stopped = self._route_internal(item, touched)
                if stopped:
                    break
                continue
            if item.run_id is None:
                item.run_id = self.run_id
            if item.rank is None:
                item.rank = self.rank
            self._accepted += 1
            name = item.event_type.name
            by_type[name] = by_type.get(name, 0) + 1
            if check:
                self._check_payload(item, name)
            lanes = self._active  # re-read per event: membership changes in stream order
            if not lanes:
                self._unrouted += 1
            for lane in lanes:
                lane.offer(item)
        for lane in (*self._active, *touched):
            lane.wake.set()
        if not stopped:
            self._maybe_report(force=False)
        return stopped

    def _route_internal(self, item: _Internal, touched: list[_Lane]) -> bool:
        """Apply a control item at its place in the stream. True for the pump's stop."""
        lanes = self._active
        if isinstance(item, _Control):
            if item.marker is None:
                self._active = (*lanes, item.lane)
            else:
                self._active = tuple(ln for ln in lanes if ln is not item.lane)
                item.marker.expect(1)
                item.lane.queue.append(item.marker)
                touched.append(item.lane)
        elif isinstance(item, _Marker):
            # Drops so far are reported now, whatever the rate limit: a flush is a request to
            # make everything visible, and flush() waits for the report too (_flush_rounds).
            self._maybe_report(force=True)
            item.expect(len(lanes))
            for lane in lanes:
                lane.queue.append(item)
        else:  # _PumpStop: whatever follows it is late
            self._pump_stopped = True
            return True
        return False

    def _check_payload(self, event: TelemetryEvent, name: str) -> None:
        problem = payload_problem(event.event_type, event.data)
        if problem is not None:
            self._invalid += 1
            if name not in self._invalid_examples:
                self._invalid_examples[name] = problem
                _log.warning("telemetry event does not match the payload catalogue: %s", problem)

    def _maybe_report(self, *, force: bool) -> None:
        """Report new drops and losses as TELEMETRY_WARNINGs (rate-limited unless forced)."""
        with self._report_lock:  # the pump and close() may both report
            stats = self.stats()
            drops = stats.dropped + sum(ln.dropped for ln in self._configured)
            lost = sum(b.lost for b in stats.backends)
            if drops == self._reported_drops and lost == self._reported_lost:
                return
            now = time.monotonic()
            if not force and now - self._last_report < _REPORT_INTERVAL_SECONDS:
                return
            self._last_report = now
            new_drops, new_lost = drops - self._reported_drops, lost - self._reported_lost
            self._reported_drops, self._reported_lost = drops, lost
        if new_drops:
            self._report(
                "events_dropped",
                f"{new_drops} high-rate events dropped since the last report ({drops} in all); "
                "lifecycle events are never dropped",
            )
        if new_lost:
            where = ", ".join(f"{b.name}: {b.lost}" for b in stats.backends if b.lost)
            self._report(
                "events_lost",
                f"{new_lost} items taken by a backend could not be kept ({where})",
            )

    def _report(self, reason: str, detail: str) -> None:
        """Emit a TELEMETRY_WARNING about the telemetry itself (lifecycle: never dropped), with
        the counts so far as numbers, so that a record restates them exactly."""
        stats = self.stats()
        event = TelemetryEvent(
            event_type=TelemetryEventType.TELEMETRY_WARNING,
            message=detail,
            data={
                "reason": reason,
                "detail": detail,
                "dropped": stats.dropped_by_backend(),
                "lost": stats.lost_by_backend(),
            },
            severity=Severity.WARNING,
        )
        # Bypasses the closed check: close() delivers reports made while it drains; one that
        # comes after the pump stopped is counted late. Counted before it is queued, so a
        # flush that sees the count unchanged knows no report of its round is in flight.
        self._reports += 1
        self._queue.append(event)
        self._wake.set()

    # -- flush and close -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted before this call is delivered and every backend
        flushed (each gets what is left of ``timeout``). False if ``timeout`` ran out first.
        On a closed hub: waits for the close to finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._config_lock:
            if self._closed:
                return self._close_done.wait(timeout) and self._close_ok
        return self._flush_rounds(deadline)

    def _flush_rounds(self, deadline: float | None) -> bool:
        """Send flush markers until a round ends with no new report of the hub's own (a
        backend that failed, or drops, during the round), so those warnings are delivered
        before flush returns. Reports are few (one failure per backend, drops once a round);
        under a producer that keeps overloading the hub the rounds stop after a few."""
        for _ in range(_FLUSH_ROUNDS):
            reports = self._reports
            marker = _Marker(deadline)
            self._queue.append(marker)
            self._wake.set()
            if not marker.done.wait(_remaining(deadline)):
                return False
            if self._reports == reports:
                break
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Deliver everything queued, then close every backend; False when ``timeout`` ran out
        first (backends whose lane had not finished are left open, their undelivered events
        counted as pending). Idempotent: a second call waits for the first to finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._config_lock:
            if self._closed:
                first = False
            else:
                first = True
                self._closed = True
        if not first:
            return self._close_done.wait(timeout) and self._close_ok
        atexit.unregister(self._atexit)
        ok = True
        try:
            ok = self._flush_rounds(deadline)  # with the warnings the final flush raises
            for lane in self._configured:  # in the order they were added
                ok = self._close_lane(lane, deadline) and ok
                self._maybe_report(force=True)  # reaches the backends still open
            self._queue.append(_PumpStop())
            self._wake.set()
            if self._pump_thread is not None:
                self._pump_thread.join(_remaining(deadline))
                ok = ok and not self._pump_thread.is_alive()
        finally:
            self._close_ok = ok
            self._close_done.set()
        return ok

    def _close_lane(self, lane: _Lane, deadline: float | None) -> bool:
        marker = _Marker(deadline, stop=True, close_backend=True)
        self._queue.append(_Control(lane, marker))
        self._wake.set()
        if marker.done.wait(_remaining(deadline)):
            lane.thread.join(_remaining(deadline))
            return True
        _log.warning("telemetry backend %s did not finish in time; left open", lane.name)
        return False

    def stats(self) -> HubStats:
        """Counts so far (cheap; safe from any thread; exact at quiescent points)."""
        late = self._late
        if self._pump_stopped:
            late += sum(1 for item in list(self._queue) if isinstance(item, TelemetryEvent))
        return HubStats(
            emitted=self._accepted + self._dropped + late,
            dropped=self._dropped,
            by_type=self._by_type.copy(),  # dict.copy is atomic under the GIL
            backends=tuple(lane.stats() for lane in self._configured),
            pump_cpu_seconds=self._pump_cpu,
            late=late,
            invalid=self._invalid,
            invalid_examples=tuple(self._invalid_examples.values()),
            unrouted=self._unrouted,
        )

    # -- fork ----------------------------------------------------------------------------------

    def _reinit_after_fork(self) -> None:
        """In a forked child: fresh locks, queues, threads and counts. A closed hub stays
        closed; an open one keeps delivering to the backends that allow it in a child (a
        FileOutput writes a file of its own), and the parent's queued events stay the
        parent's to deliver."""
        keep = tuple(
            lane.backend
            for lane in self._configured
            if getattr(lane.backend, "deliver_in_forked_child", True)
        )
        self._init_runtime()
        if self._closed:
            return
        lanes = tuple(_Lane(self, b, self._backend_capacity) for b in keep)
        self._configured = self._active = lanes

    def _close_at_multiprocessing_exit(self) -> None:
        # A multiprocessing child (a DataLoader worker) leaves through os._exit: atexit hooks
        # never run there, only multiprocessing's finalizers, which its bootstrap clears
        # first. Registered from multiprocessing's own after-fork hook, so it survives that.
        if not self._closed:
            mp_util.Finalize(self, _close_at_exit, args=(weakref.ref(self),), exitpriority=100)


_GLOBAL_LOCK = threading.Lock()
_GLOBAL_HUB: NissaHub | None = None


def get_hub() -> NissaHub:
    """The process-wide hub, created on first use. After it was closed it stays the hub (its
    late events are counted) until ``reset_hub`` makes way for a new one."""
    global _GLOBAL_HUB  # noqa: PLW0603 - the process-wide hub is deliberately global
    hub = _GLOBAL_HUB
    if hub is None:
        with _GLOBAL_LOCK:
            if _GLOBAL_HUB is None:
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
