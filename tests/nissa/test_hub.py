"""NissaHub: never blocks, never drops lifecycle events, counts every drop, isolates failures."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from esper.leyline import LIFECYCLE_EVENT_TYPES, TelemetryEvent, TelemetryEventType
from esper.nissa import (
    FileOutput,
    InMemoryOutput,
    NissaHub,
    OutputBackend,
    capture_events,
    emit,
    get_hub,
    read_events,
)

ET = TelemetryEventType


class SlowOutput(InMemoryOutput):
    """A backend that takes 1 ms per event, like a slow disk or network."""

    def emit(self, event: TelemetryEvent) -> None:
        time.sleep(0.001)
        super().emit(event)


class RaisingOutput(OutputBackend):
    def __init__(self) -> None:
        self.calls = 0

    def emit(self, event: TelemetryEvent) -> None:
        self.calls += 1
        raise RuntimeError("backend is broken")


class GatedOutput(InMemoryOutput):
    """Blocks delivery until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def emit(self, event: TelemetryEvent) -> None:
        self.gate.wait()
        super().emit(event)


def _ev(event_type: TelemetryEventType = ET.EPOCH_COMPLETED, i: int = 0) -> TelemetryEvent:
    return TelemetryEvent(event_type=event_type, epoch=i)


def test_flush_waits_for_everything_emitted_before_it() -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    for i in range(1000):
        hub.emit(_ev(i=i))
    assert hub.flush(timeout=10)
    assert [e.epoch for e in out.events] == list(range(1000))
    assert out.flushes >= 1
    hub.close()
    assert out.closed


@pytest.mark.slow
def test_a_million_events_with_a_slow_backend_keep_every_lifecycle_event_in_order() -> None:
    hub = NissaHub(capacity=4096, backend_capacity=1024)
    slow, fast = SlowOutput(), InMemoryOutput()
    hub.add_backend(slow)
    hub.add_backend(fast)
    lifecycle_sent = []
    for i in range(1_000_000):
        if i % 1000 == 0:
            event = _ev(ET.SEED_STAGE_CHANGED, i)
            lifecycle_sent.append(i)
        else:
            event = _ev(ET.EPOCH_COMPLETED, i)
        hub.emit(event)
    assert hub.close(timeout=120)
    stats = hub.stats()
    assert stats.emitted == 1_000_000 + stats.by_type.get("TELEMETRY_WARNING", 0)
    for backend, b in zip((slow, fast), stats.backends, strict=True):
        received = [e.epoch for e in backend.events if e.event_type is ET.SEED_STAGE_CHANGED]
        assert received == lifecycle_sent, f"{b.name} lost or reordered lifecycle events"
        assert b.delivered + b.dropped + b.failed + b.pending == b.emitted == stats.emitted, b
        assert b.dropped_at_hub == stats.dropped
        assert b.delivered == len(backend.events)
    assert stats.total_dropped > 0, "a 1 ms/event backend cannot keep up; drops must show"
    warnings = [e for e in fast.events if e.event_type is ET.TELEMETRY_WARNING]
    assert any(w.data["reason"] == "events_dropped" for w in warnings)


def test_a_raising_backend_does_not_stop_the_others_and_is_reported_once() -> None:
    hub = NissaHub()
    broken, good = RaisingOutput(), InMemoryOutput()
    hub.add_backend(broken)
    hub.add_backend(good)
    for i in range(50):
        hub.emit(_ev(i=i))
    hub.close()
    epochs = [e.epoch for e in good.events if e.event_type is ET.EPOCH_COMPLETED]
    assert epochs == list(range(50))
    warnings = [e for e in good.events if e.event_type is ET.TELEMETRY_WARNING]
    assert len(warnings) == 1
    assert warnings[0].data["reason"] == "backend_failed"
    assert "RaisingOutput" in warnings[0].data["detail"]
    b = hub.stats().backends[0]
    assert b.failed == broken.calls == 51  # its own warning too
    assert b.last_error == "RuntimeError: backend is broken"


def test_emit_does_not_wait_for_a_blocked_backend() -> None:
    hub = NissaHub()
    gated = GatedOutput()
    hub.add_backend(gated)
    done = threading.Event()

    def producer() -> None:
        for i in range(10_000):
            hub.emit(_ev(i=i))
        done.set()

    threading.Thread(target=producer).start()
    assert done.wait(timeout=30), "emit blocked on a backend that is not delivering"
    gated.gate.set()
    hub.close()
    assert len(gated.events) == 10_000


def test_high_rate_events_drop_when_full_but_lifecycle_events_queue() -> None:
    hub = NissaHub(capacity=10, backend_capacity=10)
    gated = GatedOutput()
    hub.add_backend(gated)
    for i in range(500):
        hub.emit(_ev(ET.EPOCH_COMPLETED, i))
    for i in range(100):
        hub.emit(_ev(ET.SEED_GERMINATED, i))
    gated.gate.set()
    hub.close()
    germinated = [e.epoch for e in gated.events if e.event_type is ET.SEED_GERMINATED]
    assert germinated == list(range(100))
    stats = hub.stats()
    assert stats.total_dropped > 0
    b = stats.backends[0]
    assert b.delivered + b.dropped + b.failed == b.emitted == stats.emitted
    assert b.dropped_at_hub == stats.dropped


def test_emit_after_close_is_counted_not_queued() -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    hub.close()
    hub.emit(_ev())
    stats = hub.stats()
    assert (stats.late, stats.dropped, stats.emitted) == (1, 0, 1)
    assert hub.close() is True  # second close is a no-op
    with pytest.raises(RuntimeError, match="closed"):
        hub.add_backend(InMemoryOutput())


def test_lifecycle_set_is_what_the_contract_says_is_never_dropped() -> None:
    names = {t.name for t in LIFECYCLE_EVENT_TYPES}
    assert {n for n in names if n.startswith("SEED_")} == {
        "SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_GATE_EVALUATED", "SEED_FOSSILIZED",
        "SEED_CULLED",
    }  # fmt: skip
    assert {"TRAINING_STARTED", "TRAINING_COMPLETED", "GOVERNOR_ROLLBACK"} <= names
    assert {"CHECKPOINT_SAVED", "CHECKPOINT_LOADED"} <= names


def test_hub_fills_in_its_run_id() -> None:
    hub = NissaHub()
    hub.run_id = "r-42"
    out = InMemoryOutput()
    hub.add_backend(out)
    hub.emit(_ev())
    explicit = _ev()
    explicit.run_id = "other"
    hub.emit(explicit)
    hub.close()
    assert [e.run_id for e in out.events] == ["r-42", "other"]


def test_capture_events_on_the_global_hub() -> None:
    with capture_events() as captured:
        emit(_ev(ET.PLATEAU_DETECTED))
    assert [e.event_type for e in captured.events] == [ET.PLATEAU_DETECTED]
    assert captured not in get_hub().backends


def test_a_forked_child_can_emit_and_its_parent_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    hub = NissaHub()
    hub.add_backend(FileOutput(path, buffer_size=10))
    for i in range(5):  # left in the parent's buffer at fork time
        hub.emit(TelemetryEvent(event_type=ET.EPOCH_COMPLETED, epoch=i, message="parent"))
    pid = os.fork()
    if pid == 0:  # child: emit through the inherited hub, deliver, exit
        code = 1
        try:
            for i in range(3):
                hub.emit(TelemetryEvent(event_type=ET.EPOCH_COMPLETED, epoch=i, message="child"))
            code = 0 if hub.close(timeout=10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for i in range(5, 7):
        hub.emit(TelemetryEvent(event_type=ET.EPOCH_COMPLETED, epoch=i, message="parent"))
    hub.close()
    parent_replay = read_events(path, strict=True)
    assert [e.epoch for e in parent_replay.events] == list(range(7))
    assert {e.message for e in parent_replay.events} == {"parent"}
    # The child wrote a file of its own beside the parent's, with its own seq numbers, so
    # seq is unique and strictly increasing within each file.
    child_replay = read_events(tmp_path / f"events.{pid}.jsonl", strict=True)
    assert [(e.message, e.epoch) for e in child_replay.events] == [("child", i) for i in range(3)]
    assert parent_replay.seqs == list(range(7))
    assert child_replay.seqs == list(range(3))
    merged = read_events(tmp_path, strict=True).events  # the directory: every file, merged
    assert len({e.event_id for e in merged}) == len(merged) == 10
