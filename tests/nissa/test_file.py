"""FileOutput and DirectoryOutput (SPEC 4)."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from esper.leyline import BackendConfigError, BackendError, TelemetryEvent, TelemetryEventType
from esper.nissa import (
    RUN_DIR_TIME_FORMAT,
    DirectoryOutput,
    FileOutput,
    NissaHub,
    parse_run_dir_time,
    read_events,
)


def _event(i: int) -> TelemetryEvent:
    return TelemetryEvent(
        event_type=TelemetryEventType.EPOCH_COMPLETED, epoch=i, data={"val_accuracy": float(i)}
    )


def test_directory_output_creates_a_parseable_timestamped_directory(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    out = DirectoryOutput(tmp_path)
    try:
        assert out.output_dir.parent == tmp_path
        assert out.output_dir.is_dir()
        assert out.output_dir.name.startswith("telemetry_")
        stamp = datetime.strptime(
            out.output_dir.name.removeprefix("telemetry_"), RUN_DIR_TIME_FORMAT
        )
        assert stamp.replace(tzinfo=UTC) >= before
        assert parse_run_dir_time(out.output_dir) == stamp.replace(tzinfo=UTC)
    finally:
        out.close()


def test_directory_output_writes_events_jsonl(tmp_path: Path) -> None:
    out = DirectoryOutput(tmp_path, buffer_size=2)
    for i in range(3):
        out.emit(_event(i))
    out.close()
    lines = (out.output_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    assert all(json.loads(line)["event_type"] == "EPOCH_COMPLETED" for line in lines)


def test_two_directory_outputs_in_the_same_second_get_distinct_parseable_dirs(
    tmp_path: Path,
) -> None:
    outs = [DirectoryOutput(tmp_path) for _ in range(3)]
    try:
        dirs = [o.output_dir for o in outs]
        assert len(set(dirs)) == 3
        assert dirs == sorted(dirs)  # names sort in creation order
        for d in dirs:
            parse_run_dir_time(d)
    finally:
        for o in outs:
            o.close()


def test_hub_routes_events_to_directory_output(tmp_path: Path) -> None:
    hub = NissaHub()
    hub.run_id = "run-1"
    out = DirectoryOutput(tmp_path)
    hub.add_backend(out)
    for i in range(25):
        hub.emit(_event(i))
    hub.close()
    replay = read_events(out.output_dir, strict=True)
    assert [e.epoch for e in replay.events] == list(range(25))
    assert {e.run_id for e in replay.events} == {"run-1"}


def test_buffer_is_written_every_buffer_size_events_and_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    out = FileOutput(path, buffer_size=10)
    for i in range(9):
        out.emit(_event(i))
    assert path.read_text() == ""
    out.emit(_event(9))
    assert len(path.read_text().splitlines()) == 10
    out.emit(_event(10))
    out.flush()
    assert len(path.read_text().splitlines()) == 11
    out.close()
    out.close()  # idempotent


def test_file_output_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    for _ in range(2):
        out = FileOutput(path)
        out.emit(_event(1))
        out.close()
    assert len(read_events(path).events) == 2


def test_unwritable_directory_is_a_clear_error_naming_it() -> None:
    # /proc refuses new directories even to root, so this holds however the tests run.
    with pytest.raises(BackendConfigError, match=r"cannot create run directory /proc/telemetry_"):
        DirectoryOutput("/proc")


def test_a_path_under_a_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(BackendConfigError, match="not_a_dir"):
        DirectoryOutput(blocker / "runs")
    with pytest.raises(BackendConfigError, match="not_a_dir"):
        FileOutput(blocker / "events.jsonl")


def test_a_full_disk_keeps_the_lines_and_writes_them_once_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    out = FileOutput(path, buffer_size=1)
    real_write = os.write
    full = {"on": True}

    def write(fd: int, data: bytes) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for i in range(5):
        out.emit(_event(i))  # never raises: the lines are kept
    with pytest.raises(BackendError, match=r"e\.jsonl: No space left on device"):
        out.flush()
    full["on"] = False
    out.flush()
    out.close()
    assert [e.epoch for e in read_events(path, strict=True).events] == [0, 1, 2, 3, 4]


def test_a_string_that_is_not_utf8_is_written_and_reads_back_the_same(tmp_path: Path) -> None:
    """A path with a byte that is not UTF-8 (``--save ck<0xff>.pt``) reaches Python as a lone
    surrogate. It used to fail the encode outside the write's error handling: the lines were
    neither written nor counted lost. It is escaped instead, and reads back as the same path."""
    path = os.fsdecode(b"ck\xff.pt")
    out = FileOutput(tmp_path / "e.jsonl", buffer_size=2)
    for i in range(5):
        out.emit(TelemetryEvent(TelemetryEventType.CHECKPOINT_SAVED, epoch=i,
                                data={"path": path, "episodes_completed": i}))  # fmt: skip
    out.close()
    assert (out.lines_taken, out.lines_written, out.lost) == (5, 5, 0)
    events = read_events(tmp_path / "e.jsonl", strict=True).events
    assert [os.fsencode(e.data["path"]) for e in events] == [b"ck\xff.pt"] * 5
