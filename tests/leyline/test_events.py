"""TelemetryEvent, its ids and timestamps (SPEC 3.1)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from esper.leyline import Severity, TelemetryEvent, TelemetryEventType, new_event_id


def test_event_constructs_with_keywords_and_payload_reads_as_a_mapping() -> None:
    event = TelemetryEvent(
        event_type=TelemetryEventType.EPOCH_COMPLETED,
        seed_id="seed_0",
        epoch=5,
        message="...",
        data={"val_accuracy": 85.5, "device": "cpu"},
    )
    assert event.data["val_accuracy"] == 85.5
    assert event.data["device"] == "cpu"
    assert event.severity is Severity.INFO
    assert event.slot_id is None


def test_timestamp_is_taken_at_creation_and_reads_as_aware_utc() -> None:
    before = datetime.now(UTC)
    event = TelemetryEvent(event_type=TelemetryEventType.TRAINING_STARTED)
    after = datetime.now(UTC)
    assert event.timestamp.tzinfo is UTC
    # Microsecond truncation may put the stamp up to 1 us before ``before``.
    assert before.timestamp() - 1e-6 <= event.timestamp.timestamp() <= after.timestamp()


def test_event_ids_are_unique_within_a_process() -> None:
    ids = {
        TelemetryEvent(event_type=TelemetryEventType.EPOCH_COMPLETED).event_id
        for _ in range(10_000)
    }
    assert len(ids) == 10_000


def test_event_ids_differ_between_parent_and_forked_child() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write_fd, new_event_id().encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    child_id = os.read(read_fd, 200).decode()
    os.close(read_fd)
    parent_id = new_event_id()
    assert child_id.split("-")[0] != parent_id.split("-")[0]


def test_creating_an_event_does_not_format_a_timestamp() -> None:
    # The stored instant is an int; formatting happens only when read.
    event = TelemetryEvent(event_type=TelemetryEventType.EPOCH_COMPLETED)
    assert isinstance(event.timestamp_ns, int)
    assert abs(event.timestamp_ns - time.time_ns()) < 5_000_000_000
