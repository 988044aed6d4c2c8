"""The hub never loses an event silently: each case here once lost or miscounted events.

Every test checks the accounting identity against counts the test keeps itself, not only
against the hub's own numbers.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import (
    FileOutput,
    InMemoryOutput,
    NissaHub,
    OutputBackend,
    capture_events,
    get_hub,
    read_events,
    reset_hub,
)
from esper.nissa.hub import hub as _hub

ET = TelemetryEventType


def _ev(i: int = 0, event_type: TelemetryEventType = ET.EPOCH_COMPLETED) -> TelemetryEvent:
    return TelemetryEvent(event_type=event_type, epoch=i)


@contextlib.contextmanager
def _pump_paused_mid_drain(
    monkeypatch: pytest.MonkeyPatch, hub: NissaHub, n: int = 1_000
) -> Iterator[None]:
    """Hold the pump in the middle of routing a long backlog: it stops after offering the
    ``n``-th event and goes on when the block ends. What the block does happens while the
    pump is mid-drain, deterministically."""
    paused, resume = threading.Event(), threading.Event()
    offered = [0]
    original = _hub._Lane.offer

    def offer(lane: object, event: TelemetryEvent) -> None:
        offered[0] += 1
        if offered[0] == n:
            paused.set()
            resume.wait(30)
        original(lane, event)  # type: ignore[arg-type]

    monkeypatch.setattr(_hub._Lane, "offer", offer)
    for i in range(2 * n):
        hub.emit(_ev(i))
    assert paused.wait(30)
    try:
        yield
    finally:
        resume.set()


def test_an_event_emitted_after_add_backend_returned_reaches_the_new_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = NissaHub()
    first = InMemoryOutput()
    hub.add_backend(first)
    late = InMemoryOutput()
    sentinel = _ev(-1, ET.SEED_GERMINATED)
    with _pump_paused_mid_drain(monkeypatch, hub):
        hub.add_backend(late)
        hub.emit(sentinel)
    hub.close()
    assert late.events == [sentinel]
    assert len(first.events) == 2_001
    a, b = hub.stats().backends
    assert (a.emitted, a.delivered, b.emitted, b.delivered) == (2_001, 2_001, 1, 1)


def test_an_event_emitted_before_remove_backend_reaches_it_and_later_ones_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    with _pump_paused_mid_drain(monkeypatch, hub):
        hub.emit(_ev(-1, ET.SEED_CULLED))
        remover = threading.Thread(target=hub.remove_backend, args=(out,))
        remover.start()
    remover.join(30)
    hub.emit(_ev(-2, ET.SEED_CULLED))
    hub.close()
    assert [e.epoch for e in out.events[-1:]] == [-1]
    assert len(out.events) == 2_001
    assert not out.closed  # removed, not closed


def test_capture_events_on_a_busy_hub_holds_exactly_what_was_emitted_inside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = NissaHub()
    hub.add_backend(InMemoryOutput())
    inside = [_ev(i, ET.SEED_FOSSILIZED) for i in range(5)]
    captured = InMemoryOutput()
    with _pump_paused_mid_drain(monkeypatch, hub):
        hub.add_backend(captured)  # what capture_events does on entry
        for e in inside:
            hub.emit(e)
    with capture_events(hub) as direct:
        hub.emit(inside[0])
    hub.emit(_ev(99, ET.SEED_FOSSILIZED))
    hub.close()
    assert captured.events[:5] == inside
    assert direct.events == [inside[0]]


# -- 2. emit racing close; second close; warnings during the final flush -----------------------


def test_events_emitted_while_close_runs_are_delivered_or_counted_late() -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    sent = [0, 0]
    go = threading.Event()

    def hammer(k: int) -> None:
        go.wait()
        after = 0
        while after < 100 and sent[k] < 2_000_000:  # until well after close
            hub.emit(_ev(sent[k]))
            sent[k] += 1
            after += hub.closed

    threads = [threading.Thread(target=hammer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    go.set()
    while sum(sent) < 20_000:  # let both threads get going, then close under them
        threading.Event().wait(0.001)
    assert hub.close(timeout=30)
    for t in threads:
        t.join()
    stats = hub.stats()
    b = stats.backends[0]
    assert stats.emitted == sum(sent)
    assert stats.late > 0
    assert b.delivered == len(out.events) == stats.accepted == sum(sent) - stats.late
    assert b.emitted == b.delivered + b.dropped + b.failed + b.pending


def test_a_second_close_waits_for_the_first_to_finish() -> None:
    release = threading.Event()

    class SlowClose(InMemoryOutput):
        def close(self) -> None:
            release.wait(10)
            super().close()

    hub = NissaHub()
    out = SlowClose()
    hub.add_backend(out)
    first = threading.Thread(target=hub.close)
    first.start()
    while not hub.closed:
        threading.Event().wait(0.001)
    second_result: list[bool] = []
    second = threading.Thread(target=lambda: second_result.append(hub.close()))
    second.start()
    second.join(0.2)
    assert second.is_alive(), "the second close returned while the first was still closing"
    release.set()
    second.join(10)
    first.join(10)
    assert second_result == [True]
    assert out.closed


@pytest.mark.parametrize("failing", ["flush", "close"])
def test_a_failure_during_the_final_flush_or_close_is_reported_to_the_backends_still_open(
    failing: str,
) -> None:
    class FailsAtTheEnd(OutputBackend):
        armed = False

        def emit(self, event: TelemetryEvent) -> None:
            pass

        def flush(self) -> None:
            if self.armed and failing == "flush":
                raise OSError("disk went away")

        def close(self) -> None:
            if failing == "close":
                raise OSError("disk went away")

    hub = NissaHub()
    ending = FailsAtTheEnd()
    hub.add_backend(ending)  # closed first: backends close in the order they were added
    watcher = InMemoryOutput()
    hub.add_backend(watcher)
    hub.emit(_ev(1))
    assert hub.flush(timeout=10)
    ending.armed = True  # from here on, only close() meets the failure
    hub.close()
    warnings = watcher.of_type(ET.TELEMETRY_WARNING)
    assert [w.data["reason"] for w in warnings] == ["backend_failed"]
    assert f"failed in {failing}" in warnings[0].data["detail"]
    assert "disk went away" in warnings[0].data["detail"]


def test_get_hub_after_close_counts_late_events_instead_of_building_a_silent_new_hub() -> None:
    hub = get_hub()
    hub.close()
    get_hub().emit(_ev())
    assert get_hub() is hub
    assert hub.stats().late == 1
    reset_hub()
    assert get_hub() is not hub


# -- 3. fork ------------------------------------------------------------------------------------


def _in_child(body: object) -> int:
    """Run ``body()`` in a forked child; its return value (an int) is the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = int(body())  # type: ignore[operator]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_child_forked_from_a_closed_hub_starts_no_threads_and_counts_its_emits_late() -> None:
    hub = NissaHub()
    hub.add_backend(InMemoryOutput())
    hub.close()

    def child() -> int:
        before = threading.active_count()
        hub.emit(_ev())
        if threading.active_count() != before or not hub.closed:
            return 1
        return 0 if hub.stats().late == 1 else 2

    assert _in_child(child) == 0


def test_every_backend_rebuilds_its_lock_in_a_forked_child(tmp_path: Path) -> None:
    from esper.karn.sanctum import SanctumAggregator
    from esper.nissa.prometheus import PrometheusOutput

    backends = [InMemoryOutput(), SanctumAggregator(), PrometheusOutput(cuda=False),
                FileOutput(tmp_path / "e.jsonl")]  # fmt: skip
    held = threading.Event()
    release = threading.Event()

    def hold_all() -> None:
        for b in backends:
            b._lock.acquire()  # type: ignore[attr-defined]
        held.set()
        release.wait(30)
        for b in backends:
            b._lock.release()  # type: ignore[attr-defined]

    holder = threading.Thread(target=hold_all)
    holder.start()
    held.wait(10)
    try:

        def child() -> int:
            for i, b in enumerate(backends):
                if not b._lock.acquire(timeout=5):  # type: ignore[attr-defined]
                    return 10 + i
            return 0

        assert _in_child(child) == 0
    finally:
        release.set()
        holder.join()


def test_only_backends_that_can_work_in_a_child_keep_receiving_there(tmp_path: Path) -> None:
    from esper.nissa.prometheus import PrometheusOutput

    hub = NissaHub()
    prom = PrometheusOutput(cuda=False)
    hub.add_backend(prom)
    hub.add_backend(FileOutput(tmp_path / "events.jsonl"))

    def child() -> int:
        names = [type(b).__name__ for b in hub.backends]
        return 0 if names == ["FileOutput"] else 1

    assert _in_child(child) == 0
    hub.close()


# -- 8. duck-typed backends ---------------------------------------------------------------------


class Recorder:
    """A user's backend: the three methods of the contract, no base class, no name."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []
        self.closed = False

    def emit(self, event: TelemetryEvent) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_any_object_with_emit_flush_and_close_is_a_backend_named_after_its_class() -> None:
    hub = NissaHub()
    rec = Recorder()
    hub.add_backend(rec)
    hub.emit(_ev(1))
    hub.close()
    assert [e.epoch for e in rec.events] == [1]
    assert rec.closed
    (stats,) = hub.stats().backends
    assert (stats.name, stats.delivered, stats.lost) == ("Recorder", 1, 0)


def test_an_object_without_the_contract_is_refused_naming_what_it_lacks() -> None:
    class NoClose:
        def emit(self, event: TelemetryEvent) -> None:
            pass

        def flush(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"NoClose .*close\(\)"):
        NissaHub().add_backend(NoClose())  # type: ignore[arg-type]


# -- 4. counters only go up ----------------------------------------------------------------------


def test_otel_lost_counts_failed_spans_only_and_never_goes_down() -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from esper.nissa.otel import OTelOutput

    results = [SpanExportResult.SUCCESS]

    class Switchable(InMemorySpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            super().export(spans)
            return results[0]

    exporter = Switchable()
    otel = OTelOutput(exporter=exporter, batch=False)
    seen = []

    def germinate(seed: str) -> None:
        for event_type in (ET.SEED_GERMINATED, ET.SEED_CULLED):
            otel.emit(make_event(event_type, example_payload(event_type, seed_id=seed)))
        seen.append(otel.lost)

    germinate("a")  # exported: nothing lost
    results[0] = SpanExportResult.FAILURE
    germinate("b")  # these fail: lost
    results[0] = SpanExportResult.SUCCESS
    germinate("c")
    otel.close()
    seen.append(otel.lost)
    assert seen[0] == 0
    assert seen[1] > 0
    assert seen == sorted(seen), f"otel lost went down: {seen}"


def test_the_lost_counter_on_metrics_never_decreases_while_spans_queue_and_export() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from esper.nissa.otel import OTelOutput
    from esper.nissa.prometheus import PrometheusOutput

    hub = NissaHub()
    otel = OTelOutput(exporter=InMemorySpanExporter())  # batched: spans wait in a queue
    prom = PrometheusOutput(hub_stats=hub.stats, cuda=False)
    hub.add_backend(otel)
    hub.add_backend(prom)
    samples = []
    for i in range(20):
        for event_type in (ET.SEED_GERMINATED, ET.SEED_CULLED):
            hub.emit(make_event(event_type, example_payload(event_type, seed_id=f"s{i}")))
        hub.flush()
        value = prom.registry.get_sample_value(
            "esper_telemetry_backend_lost_total", {"backend": "otel"}
        )
        samples.append(value)
    hub.close()
    assert samples == [0.0] * 20  # queued spans are not lost spans


class _EmittingDataset:
    """A dataset whose items emit an event in the DataLoader worker that loads them."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> int:
        event_type = ET.CHECKPOINT_LOADED
        get_hub().emit(make_event(event_type, example_payload(event_type), epoch=i,
                                  message="worker"))  # fmt: skip
        return i


def test_events_emitted_in_dataloader_workers_are_kept_in_their_own_files(
    tmp_path: Path,
) -> None:
    """Workers leave through os._exit, where atexit never runs: the hub closes on
    multiprocessing's own exit hook instead, and every worker event reaches the disk."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from esper.nissa import DirectoryOutput

    hub = get_hub()
    out = DirectoryOutput(tmp_path)
    hub.add_backend(out)
    loader = DataLoader(_EmittingDataset(), batch_size=4, num_workers=2,  # type: ignore[arg-type]
                        multiprocessing_context="fork")  # fmt: skip
    seen = [int(i) for batch in loader for i in batch]
    hub.close()
    replay = read_events(out.output_dir, strict=True)
    assert sorted(seen) == list(range(40))
    assert len(replay.files) == 3  # the parent's file and one per worker
    assert sorted(e.epoch for e in replay.events if e.message == "worker") == list(range(40))
    assert torch is not None
