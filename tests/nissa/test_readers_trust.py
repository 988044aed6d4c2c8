"""The readers trust nothing they read: a run's status comes from its own events, and every
field they use is checked for its type and a sane range, naming file:line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import FileOutput, read_events
from esper.scripts import cli
from esper.scripts.sanctum import load

ET = TelemetryEventType


def _event(run_id: str, event_type: ET, on: int | None = None, **data: object) -> TelemetryEvent:
    """An event of run ``run_id``, of rank ``on`` (None: a single-process run)."""
    e = make_event(event_type, example_payload(event_type, **data))
    e.run_id, e.rank = run_id, on
    return e


def _run(path: Path, run_id: str, *, finished: bool, rank: int | None = None) -> None:
    """One run appended to ``path`` as a real run writes it (its own writer, seq from 0)."""
    out = FileOutput(path)
    world = 1 if rank is None else 2
    out.emit(_event(run_id, ET.TRAINING_STARTED, rank, world_size=world, rank=rank or 0))
    out.emit(_event(run_id, ET.TELEMETRY_WARNING, rank, reason="events_dropped"))
    if finished:
        out.emit(_event(run_id, ET.TRAINING_COMPLETED, rank, status="completed"))
    out.close()


@pytest.mark.parametrize("order", ["completed-then-killed", "killed-then-completed"])
def test_a_reused_telemetry_file_is_named_mixed_and_each_run_keeps_its_status(
    tmp_path: Path, order: str
) -> None:
    """The bug: the status came from any TRAINING_COMPLETED in the file, so a killed run
    appended after (or before) a completed one read as completed."""
    path = tmp_path / "reused.jsonl"
    finished = [True, False] if order == "completed-then-killed" else [False, True]
    for n, done in enumerate(finished):
        _run(path, f"run-{n}", finished=done)
    status = read_events(path).status
    assert status.state == "mixed"
    states = {f"run-{n}": "completed" if done else "unfinished" for n, done in enumerate(finished)}
    for run_id, state in states.items():
        assert f"{run_id}: {state}" in status.detail
    aggregator, problems = load(path)
    assert problems == []
    sanctum_status = aggregator.status()
    assert sanctum_status is not None
    assert sanctum_status.state == "mixed"


def test_two_runs_rank_files_in_one_directory_are_not_one_completed_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "telemetry_2026-12-06_000000"
    _run(run_dir / "events.rank0.jsonl", "run-a", finished=True, rank=0)
    _run(run_dir / "events.rank1.jsonl", "run-b", finished=True, rank=1)
    status = read_events(run_dir).status
    assert status.state == "mixed"
    assert "the record holds 2 runs" in status.detail


def test_lines_appended_twice_are_named_by_their_non_rising_seq(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    _run(path, "run-a", finished=True)
    path.write_text(path.read_text() * 2)
    replay = read_events(path)
    assert len(replay.events) == 3
    assert [p.line for p in replay.problems] == [4, 5, 6]
    assert "seq 0 does not rise" in replay.problems[0].reason


def _tamper(path: Path, line: int, **changes: object) -> None:
    """Rewrite one line's JSON object (``data.x`` for a payload field)."""
    lines = path.read_text().splitlines()
    obj = json.loads(lines[line - 1])
    for key, value in changes.items():
        if key.startswith("data_"):
            obj["data"][key[5:]] = value
        else:
            obj[key] = value
    lines[line - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


def test_a_huge_world_size_is_a_named_problem_not_a_billion_ranks(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    _run(path, "run-a", finished=True, rank=0)
    _tamper(path, 1, data_world_size=1_000_000_000)
    replay = read_events(path)
    (problem,) = replay.problems
    assert str(problem).startswith(f"{path}:1: corrupt line: field data.world_size is 1000000000")
    assert len(replay.ranks) == 1  # sized by what could be trusted


@pytest.mark.parametrize(
    ("line", "changes", "named"),
    [
        (1, {"data_world_size": "2"}, "field 'world_size' expects int, got str '2'"),
        (2, {"timestamp": "9999-01-01T00:00:00.000000000Z"}, "field timestamp is in the year 9999"),
        (1, {"seq": -1}, "field seq must be a non-negative integer"),
        (2, {"run_id": 7}, "field run_id must be a string or null"),
        (3, {"epoch": "3"}, "field epoch must be a non-negative integer"),
    ],
)
def test_summarize_names_a_field_of_the_wrong_type_or_range_without_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: int,
    changes: dict[str, object],
    named: str,
) -> None:
    path = tmp_path / "e.jsonl"
    _run(path, "run-a", finished=True, rank=0)
    _tamper(path, line, **changes)
    assert cli.main(["telemetry", "summarize", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}:{line}: corrupt line: " in err
    assert named in err
    assert cli.main(["telemetry", "summarize", "--strict", str(path)]) == 1
    assert f"{path}:{line}" in capsys.readouterr().err


def test_sanctum_names_a_string_env_id_instead_of_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    out = FileOutput(path)
    out.emit(_event("run-a", ET.TRAINING_STARTED))
    epoch = make_event(ET.EPOCH_COMPLETED, example_payload(ET.EPOCH_COMPLETED, "env"))
    epoch.run_id = "run-a"
    out.emit(epoch)
    out.close()
    _tamper(path, 2, data_env_id="zero")
    aggregator, problems = load(path)
    (problem,) = problems
    assert "field 'env_id' expects int, got str 'zero'" in str(problem)
    assert aggregator.get_snapshot().envs == {}
