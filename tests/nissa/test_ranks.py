"""The telemetry of one rank of a multi-rank run, without starting one: the rank on every
event and line, one file per rank, the readers' per-rank verdicts, one trace over ranks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from esper.leyline import (
    BackendConfigError,
    RankInfo,
    TelemetryEvent,
    TelemetryEventType,
    example_payload,
    make_event,
)
from esper.nissa import InMemoryOutput, NissaHub, read_events
from esper.nissa.otel import OTelOutput, run_trace_ids
from esper.nissa.record.files import DirectoryOutput
from esper.nissa.record.jsonl import decode_line, encode_event
from esper.nissa.record.replay import run_status

ET = TelemetryEventType
_clock = itertools.count(1_800_000_000_000_000_000, 1_000_000_000)


def _event(
    key: tuple[TelemetryEventType, str | None], at_rank: int | None, **over: object
) -> TelemetryEvent:
    data = {**example_payload(*key), **over}
    e = make_event(key[0], data)
    e.timestamp_ns = next(_clock)
    e.rank = at_rank
    return e


def _started(rank: int, world: int = 2) -> TelemetryEvent:
    return _event((ET.TRAINING_STARTED, None), rank, world_size=world, rank=rank, node="n")


def _completed(rank: int, status: str = "completed", **over: object) -> TelemetryEvent:
    return _event((ET.TRAINING_COMPLETED, None), rank, status=status, **over)


def _epoch(rank: int) -> TelemetryEvent:
    return _event((ET.EPOCH_COMPLETED, "env"), rank)


def test_the_rank_travels_on_a_line_and_a_single_process_line_has_none() -> None:
    e = _epoch(1)
    event, _seq = decode_line(encode_event(e, 0))
    assert event.rank == 1
    e.rank = None
    line = encode_event(e, 0)
    assert '"rank"' not in line  # a single-process run's lines are as they were
    assert decode_line(line)[0].rank is None
    with pytest.raises(ValueError, match=r"field rank must be an integer in 0\.\.65535, got 'one'"):
        decode_line(line[:-1] + ',"rank":"one"}')


def test_the_hub_stamps_its_rank_on_every_event() -> None:
    hub = NissaHub()
    sink = InMemoryOutput()
    hub.add_backend(sink)
    hub.rank = 3
    hub.emit(_epoch(None))
    hub.close()
    assert [e.rank for e in sink.events] == [3]


def test_a_rank_writes_its_own_file_in_the_shared_directory_and_never_another_runs(
    tmp_path: Path,
) -> None:
    outs = [DirectoryOutput(tmp_path, rank=r, name="telemetry_2026-11-23_000000") for r in (0, 1)]
    assert [o.path.name for o in outs] == ["events.rank0.jsonl", "events.rank1.jsonl"]
    assert outs[0].output_dir == outs[1].output_dir
    for o in outs:
        o.close()
    with pytest.raises(BackendConfigError, match=r"events\.rank1\.jsonl already exists"):
        DirectoryOutput(tmp_path, rank=1, name="telemetry_2026-11-23_000000")


def test_the_readers_find_rank_files_in_rank_order(tmp_path: Path) -> None:
    run = tmp_path / "telemetry_2026-11-23_000000"
    for rank in (0, 2, 10):
        out = DirectoryOutput(tmp_path, rank=rank, name=run.name)
        out.emit(_started(rank, world=11))
        out.close()
    replay = read_events(tmp_path)  # the parent of the run directory works too
    assert [f.name for f in replay.files] == [
        "events.rank0.jsonl", "events.rank2.jsonl", "events.rank10.jsonl"
    ]  # fmt: skip
    states = {r.rank: r.state for r in replay.ranks}
    assert states[0] == states[2] == states[10] == "unfinished"
    assert [r for r, s in states.items() if s == "missing"] == [1, *range(3, 10)]


def test_every_rank_completed_is_a_completed_run() -> None:
    status = run_status([_started(0), _started(1), _epoch(0), _completed(1), _completed(0)])
    assert status.state == "completed"


def test_a_rank_whose_events_stop_while_another_finished_died() -> None:
    events = [_started(0), _started(1), _epoch(1), _epoch(0)]
    events.append(_completed(0, "failed", error="lost rank 1", lost_ranks=[1]))
    status = run_status(events)
    assert status.state == "failed"
    assert "rank 1 died: its events stop at" in status.detail
    assert "rank 0 failed: lost rank 1" in status.detail


def test_no_rank_finished_is_an_unfinished_run() -> None:
    status = run_status([_started(0), _started(1), _epoch(0), _epoch(1)])
    assert status.state == "unfinished"
    assert "died" not in status.detail


def test_a_rank_with_no_events_is_missing() -> None:
    status = run_status([_started(0), _completed(0)])
    assert status.state == "partial"  # the record lacks rank 1; the run may have completed
    assert not status.finished
    assert "rank 1: no events" in status.detail
    died = run_status([_started(0), _started(1, world=3), _epoch(1), _completed(0)])
    assert died.state == "failed"  # a rank that died is known, whatever else is missing
    assert "rank 2: no events" in died.detail


def test_ranks_interrupted_together_are_an_interrupted_run() -> None:
    events = [_started(0), _started(1)]
    events += [_completed(r, "interrupted", error="SIGTERM") for r in (0, 1)]
    assert run_status(events).state == "interrupted"


def test_a_single_process_run_reads_as_before() -> None:
    events = [_started(0), _completed(0)]
    for e in events:
        e.rank = None
    assert run_status(events).state == "completed"


def test_every_rank_joins_the_run_trace_and_only_rank_0_exports_the_run_span() -> None:
    exporters = {r: InMemorySpanExporter() for r in (0, 1)}
    outs = {
        r: OTelOutput(
            exporter=exporters[r], run_id="run-x", rank=RankInfo(rank=r, world_size=2), batch=False
        )
        for r in (0, 1)
    }
    for r, out in outs.items():
        out.emit(_event((ET.TRAINING_STARTED, None), r, run_id="run-x", max_epochs=2))
        out.emit(_event((ET.SEED_GERMINATED, None), r, env_id=r, seed_id=f"s{r}"))
        out.emit(_event((ET.EPOCH_COMPLETED, "aggregate"), r, inner_epoch=2))
        out.emit(_completed(r))
        out.close()
        assert out.lost == 0
    trace_id, run_span_id = run_trace_ids("run-x")
    spans = {r: exporters[r].get_finished_spans() for r in (0, 1)}
    assert {s.context.trace_id for r in (0, 1) for s in spans[r]} == {trace_id}
    assert [s.context.span_id for s in spans[0] if s.name == "esper.run"] == [run_span_id]
    assert not [s for s in spans[1] if s.name == "esper.run"]
    (episode,) = [s for s in spans[1] if s.name == "esper.episode"]
    assert episode.parent is not None
    assert episode.parent.span_id == run_span_id
    assert episode.resource.attributes["esper.rank"] == 1
