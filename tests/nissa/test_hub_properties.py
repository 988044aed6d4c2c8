"""A stateful property test of the hub's accounting (Hypothesis RuleBasedStateMachine).

Rules interleave emits from several threads, adding and removing fast, slow and raising
backends, flushes, close, and emits after close. After every step the hub is brought to a
quiescent point (a flush) and its counts are checked against what the test itself sent and
what each backend itself received:

- per backend: emitted = delivered + failed + dropped + pending, with pending 0; the user
  events it was sent = those it received + those it raised on + its drops;
- every lifecycle event sent to a backend reached it, in order;
- the hub: emitted = the user's events + its own warnings; events after close are ``late``.
"""

from __future__ import annotations

import threading
import time

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import NissaHub

ET = TelemetryEventType
USER = "user"


class Probe:
    """A backend that records what it received; ``kind`` makes it fast, slow or raising."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind
        self.name = f"{kind}-{index}"
        self.received: list[TelemetryEvent] = []
        self.raised_on: list[TelemetryEvent] = []
        self.closed = False
        self.calls = 0

    def emit(self, event: TelemetryEvent) -> None:
        self.calls += 1
        if self.kind == "slow":
            time.sleep(0.0002)  # a slow disk: the work itself, not a wait for another thread
        if (
            self.kind == "raising"
            and event.message == USER
            and not event.is_lifecycle
            and (self.calls % 3 == 0)
        ):
            self.raised_on.append(event)
            raise RuntimeError("backend broke")
        self.received.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class HubMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Small queues so that high-rate events really are dropped now and then.
        self.hub = NissaHub(capacity=64, backend_capacity=32, check_payloads=False)
        self.attached: list[Probe] = []
        self.removed: list[Probe] = []
        self.sent: dict[int, list[TelemetryEvent]] = {}  # id(probe) -> user events sent to it
        self.total_user = 0
        self.after_close = 0
        self.unattached = 0  # user events emitted (before close) while no backend was attached
        self.made = 0

    def _event(self, lifecycle: bool) -> TelemetryEvent:
        self.made += 1
        event_type = ET.SEED_STAGE_CHANGED if lifecycle else ET.EPOCH_COMPLETED
        return TelemetryEvent(event_type=event_type, epoch=self.made, message=USER)

    @rule(
        threads=st.integers(1, 3),
        per_thread=st.integers(1, 150),
        lifecycle_every=st.integers(1, 10),
    )
    def emit_from_threads(self, threads: int, per_thread: int, lifecycle_every: int) -> None:
        batches = [
            [self._event(i % lifecycle_every == 0) for i in range(per_thread)]
            for _ in range(threads)
        ]

        def send(batch: list[TelemetryEvent]) -> None:
            for event in batch:
                self.hub.emit(event)

        workers = [threading.Thread(target=send, args=(b,)) for b in batches]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        n = threads * per_thread
        self.total_user += n
        if self.hub.closed:
            self.after_close += n
            return
        if not self.attached:
            self.unattached += n
        for probe in self.attached:
            self.sent[id(probe)].extend(e for b in batches for e in b)

    @precondition(lambda self: not self.hub.closed and len(self.attached) < 4)
    @rule(kind=st.sampled_from(["fast", "slow", "raising"]))
    def add_backend(self, kind: str) -> None:
        probe = Probe(kind, len(self.attached) + len(self.removed))
        self.hub.add_backend(probe)
        self.attached.append(probe)
        self.sent[id(probe)] = []

    @precondition(lambda self: not self.hub.closed and self.attached)
    @rule(which=st.integers(0, 3))
    def remove_backend(self, which: int) -> None:
        probe = self.attached.pop(which % len(self.attached))
        final = self.hub.remove_backend(probe, timeout=30)
        assert final is not None
        self._check_backend(probe, final)
        self.removed.append(probe)
        assert not probe.closed

    @rule()
    def flush(self) -> None:
        assert self.hub.flush(timeout=30)

    @precondition(lambda self: not self.hub.closed)
    @rule()
    def close(self) -> None:
        assert self.hub.close(timeout=30)
        assert all(p.closed for p in self.attached)

    def _check_backend(self, probe: Probe, stats: object) -> None:
        b = stats  # BackendStats
        sent = self.sent[id(probe)]
        user_received = [e for e in probe.received if e.message == USER]
        warnings = [e for e in probe.received if e.event_type is ET.TELEMETRY_WARNING]
        assert b.pending == 0  # type: ignore[attr-defined]
        assert b.emitted == b.delivered + b.failed + b.dropped  # type: ignore[attr-defined]
        assert b.delivered == len(probe.received)  # type: ignore[attr-defined]
        assert b.failed == len(probe.raised_on)  # type: ignore[attr-defined]
        assert len(sent) == len(user_received) + len(probe.raised_on) + b.dropped  # type: ignore[attr-defined]
        assert b.emitted == len(sent) + len(warnings)  # type: ignore[attr-defined]
        lifecycle_sent = [e.epoch for e in sent if e.is_lifecycle]
        lifecycle_got = [e.epoch for e in user_received if e.is_lifecycle]
        assert lifecycle_got == lifecycle_sent

    @invariant()
    def accounting_is_exact(self) -> None:
        self.hub.flush(timeout=30)
        stats = self.hub.stats()
        warnings = stats.by_type.get("TELEMETRY_WARNING", 0)
        assert stats.emitted == self.total_user + warnings
        assert stats.late == self.after_close
        assert stats.emitted == stats.accepted + stats.dropped + stats.late
        # Events nobody was attached to receive are counted as such, unless the full ingress
        # queue dropped them first; a few of the hub's own warnings can be among them (about
        # a backend that was just removed).
        assert self.unattached - stats.dropped <= stats.unrouted <= self.unattached + warnings
        by_name = {b.name: b for b in stats.backends}
        for probe in self.attached:
            self._check_backend(probe, by_name[probe.name])

    def teardown(self) -> None:
        self.hub.close(timeout=30)


HubMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=20, deadline=None, print_blob=True
)
test_hub_accounting_is_exact_under_any_interleaving = HubMachine.TestCase
