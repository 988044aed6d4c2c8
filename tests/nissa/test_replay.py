"""Reading runs back: torn tails, corrupt lines, run directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.leyline import CorruptLineError, ReplayError, TelemetryEvent, TelemetryEventType
from esper.nissa import DirectoryOutput, encode_event, read_events


def _lines(n: int) -> list[str]:
    return [
        encode_event(TelemetryEvent(event_type=TelemetryEventType.EPOCH_COMPLETED, epoch=i), i)
        for i in range(n)
    ]


def test_a_torn_last_line_is_tolerated_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = _lines(4)
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    replay = read_events(path, strict=True)
    assert [e.epoch for e in replay.events] == [0, 1, 2]
    torn = replay.torn_tail
    assert torn is not None
    assert torn.line == 4
    assert str(torn).startswith(f"{path}:4: torn last line")


def test_a_corrupt_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = _lines(5)
    lines[2] = '{"schema": 1, "oops"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptLineError, match=rf"{path}:3: not JSON") as info:
        read_events(path, strict=True)
    assert (info.value.path, info.value.line) == (str(path), 3)
    replay = read_events(path)  # lenient: everything else is kept
    assert [e.epoch for e in replay.events] == [0, 1, 3, 4]
    assert [(p.line, p.torn) for p in replay.problems] == [(3, False)]


def test_a_line_with_a_bad_field_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_lines(1)[0].replace("EPOCH_COMPLETED", "NO_SUCH_EVENT") + "\n")
    with pytest.raises(CorruptLineError, match=r":1: missing key or unknown name 'NO_SUCH_EVENT'"):
        read_events(path, strict=True)


def test_a_newer_schema_is_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_lines(1)[0].replace('"schema":1', '"schema":99') + "\n")
    with pytest.raises(CorruptLineError, match=r"unsupported schema 99"):
        read_events(path, strict=True)


def test_invalid_utf8_is_a_corrupt_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(_lines(1)[0].encode() + b"\n\xff\xfe\n")
    replay = read_events(path)
    assert len(replay.events) == 1
    assert replay.problems[0].line == 2


def test_a_run_directory_or_its_parent_resolves_to_events_jsonl(tmp_path: Path) -> None:
    out = DirectoryOutput(tmp_path)
    out.emit(TelemetryEvent(event_type=TelemetryEventType.TRAINING_STARTED))
    out.close()
    assert len(read_events(out.output_dir).events) == 1
    assert len(read_events(tmp_path).events) == 1
    second = DirectoryOutput(tmp_path)
    second.close()
    with pytest.raises(ReplayError, match="holds 2 run directories"):
        read_events(tmp_path)
    with pytest.raises(ReplayError, match="no such file"):
        read_events(tmp_path / "missing")
