"""A replay keeps every event: it waits for its backends instead of letting a full queue drop.

Found by the backfill benchmark: ``esper telemetry replay`` of a 100,000-event record into a
run directory dropped 23,202 events (the record is read far faster than a file is written, and
the hub protects training by dropping), and exited 3 saying so.
"""

from __future__ import annotations

from pathlib import Path

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import NissaHub, read_events
from esper.nissa.backends import BackendSpec
from esper.runs.session import RunSession

ET = TelemetryEventType
EVENTS = 2_000


def _events() -> list[TelemetryEvent]:
    return [
        make_event(ET.EPOCH_COMPLETED, example_payload(ET.EPOCH_COMPLETED, "env", env_id=i))
        for i in range(EVENTS)
    ]


def _session(tmp_path: Path) -> RunSession:
    # Queues of 16: a burst of 2,000 events overflows them unless the producer waits.
    hub = NissaHub(capacity=16, backend_capacity=16, schedule_delay=1.0)
    return RunSession(BackendSpec(telemetry_dir=tmp_path), hub=hub, announce=False)


def test_a_replay_larger_than_every_queue_keeps_every_event(tmp_path: Path) -> None:
    session = _session(tmp_path / "paced")
    for e in _events():
        session.emit_recorded(e)
    session.close()
    assert session.summary().kept
    assert len(read_events(tmp_path / "paced").events) == EVENTS


def test_the_same_burst_through_emit_alone_drops_and_says_so(tmp_path: Path) -> None:
    session = _session(tmp_path / "burst")
    for e in _events():
        session.hub.emit(e)
    session.close()
    assert not session.summary().kept  # the case the pacing exists for
    assert len(read_events(tmp_path / "burst").events) < EVENTS
