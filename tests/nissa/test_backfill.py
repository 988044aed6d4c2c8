"""Backfill's samples, and its command's errors, without a training run (the end-to-end proof
against a live Prometheus: tests/runs/test_backfill.py)."""

from __future__ import annotations

import io
import itertools
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import DirectoryOutput
from esper.nissa.prometheus import tsdb
from esper.nissa.prometheus.backfill import START_LABEL, SeriesId, backfill_runs, write_openmetrics
from esper.nissa.prometheus.catalogue import MetricDetail
from esper.scripts import cli

ET = TelemetryEventType
T0 = 1_796_000_000_000_000_000  # ns
SEED = example_payload(ET.SEED_GERMINATED)


def _event(kind: tuple[TelemetryEventType, str | None], t_ns: int, *, run_id: str = "r1",
           rank: int | None = None, **data: Any) -> TelemetryEvent:  # fmt: skip
    payload = {**example_payload(*kind), **data}
    event = make_event(kind[0], payload)
    return TelemetryEvent(event.event_type, data=event.data, timestamp_ns=t_ns,
                          run_id=run_id, rank=rank)  # fmt: skip


def _run(run_id: str = "r1", start: int = T0, rank: int | None = None) -> list[TelemetryEvent]:
    started = _event((ET.TRAINING_STARTED, None), start, run_id=run_id, rank=rank,
                     mode="ppo", task="digits", world_size=1 if rank is None else 2,
                     local_rank=rank or 0, node="n1", slot_ids=[SEED["slot_id"]],
                     blueprint_ids=[SEED["blueprint_id"]])  # fmt: skip
    started.data.update(run_id=run_id, rank=rank or 0)
    return [
        started,
        _event((ET.SEED_GERMINATED, None), start + 1_000_000, run_id=run_id, rank=rank),
        _event((ET.SEED_GERMINATED, None), start + 2_000_000, run_id=run_id, rank=rank),
        _event((ET.SEED_GERMINATED, None), start + 5_000_000_000, run_id=run_id, rank=rank),
        _event(
            (ET.TRAINING_COMPLETED, None),
            start + 6_000_000_000,
            run_id=run_id,
            rank=rank,
            status="completed",
        ),
    ]


def _points(run: Any, name: str, **labels: str) -> list[tuple[int, float]]:
    (points,) = [
        p for sid, p in run.samples.items()
        if sid.name == name and labels.items() <= dict(sid.labels).items()
    ]  # fmt: skip
    return list(points)


def test_a_sample_at_every_change_one_before_the_first_event_and_one_at_the_last() -> None:
    (run,) = backfill_runs(_run())
    germinated = _points(run, "esper_seed_germinated_total", slot_id=str(SEED["slot_id"]),
                         blueprint_id=str(SEED["blueprint_id"]))  # fmt: skip
    t0 = T0 // 1_000_000
    # At zero from TRAINING_STARTED, one sample per germination, the closing one at the end.
    assert germinated == [(t0, 0.0), (t0 + 1, 1.0), (t0 + 2, 2.0), (t0 + 5000, 3.0),
                          (t0 + 6000, 3.0)]  # fmt: skip
    events = _points(run, "esper_telemetry_events_total", event_type="SEED_GERMINATED")
    assert events[0] == (t0 - 1, 0.0)  # started at zero before the run's first event
    assert run.counter_value("esper_telemetry_events") == 5


def test_two_changes_in_one_millisecond_keep_the_later_value() -> None:
    events = _run()
    events[2] = _event((ET.SEED_GERMINATED, None), T0 + 1_500_000)  # in the first's millisecond
    (run,) = backfill_runs(events)
    series = _points(run, "esper_telemetry_events_total", event_type="SEED_GERMINATED")
    t0 = T0 // 1_000_000
    assert series[:3] == [(t0 - 1, 0.0), (t0 + 1, 2.0), (t0 + 5000, 3.0)]


def test_labels_are_the_shipped_jobs_and_the_recording_is_the_instance() -> None:
    (run,) = backfill_runs(_run())
    labels = dict(next(iter(run.samples)).labels)
    assert {k: labels[k] for k in ("job", "run_id", "mode", "task", "instance")} == {
        "job": "esper-trainer", "run_id": "r1", "mode": "ppo", "task": "digits",
        "instance": "recorded:r1",
    }  # fmt: skip
    assert "rank" not in labels
    assert not any(s.name.endswith("_created") for s in run.samples)
    scraped = ("esper_cuda", "esper_telemetry_events_dropped", "esper_telemetry_backend_lost")
    assert not any(s.family.startswith(scraped) for s in run.samples)


def test_each_rank_of_a_run_is_its_own_instance_with_rank_labels() -> None:
    (run,) = backfill_runs([*_run(rank=0), *_run(rank=1, start=T0 + 10_000)])
    assert run.ranks == [0, 1]
    ranks = {dict(s.labels)["instance"]: dict(s.labels)["rank"] for s in run.samples}
    assert ranks == {"recorded:r1:rank0": "0", "recorded:r1:rank1": "1"}
    collective = [s for s in run.samples if s.family == "esper_collective_wait_seconds"]
    assert collective  # a rank's collective series exist from the start, as served live


def test_align_start_moves_every_run_to_one_instant_and_labels_the_real_start() -> None:
    later = T0 + 86_400 * 10**9 * 3  # recorded three days later
    runs = backfill_runs([*_run("a"), *_run("b", start=later)], align_start_ns=T0 + 7 * 10**9)
    assert [r.run_id for r in runs] == ["a", "b"]
    assert {r.start_ms for r in runs} == {(T0 + 7 * 10**9) // 1_000_000 - 1}
    starts = {r.run_id: dict(next(iter(r.samples)).labels)[START_LABEL] for r in runs}
    real = {"a": T0, "b": later}
    assert starts == {
        k: datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")
        for k, ns in real.items()
    }


def test_openmetrics_keeps_families_together_and_each_series_in_time_order() -> None:
    runs = backfill_runs([*_run("a"), *_run("b", start=T0 + 10**9)])
    text = io.StringIO()
    n = write_openmetrics(runs, text)
    lines = text.getvalue().splitlines()
    assert lines[-1] == "# EOF"
    assert n == sum(len(p) for r in runs for p in r.samples.values())
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    last: dict[str, float] = {}
    for line in lines:
        if not line.startswith("#"):
            series, _value, stamp = line.rsplit(" ", 2)
            assert float(stamp) >= last.get(series, 0.0)
            last[series] = float(stamp)


def test_series_ids_sort_labels() -> None:
    sid = SeriesId("f", "gauge", "f", (("a", "1"), ("b", "2")))
    assert dict(sid.labels) == {"a": "1", "b": "2"}


# -- the command's errors --------------------------------------------------------------------


def _recorded(tmp_path: Path) -> Path:
    out = DirectoryOutput(tmp_path / "runs")
    for e in _run():
        out.emit(e)
    out.close()
    return out.output_dir


def test_a_path_with_no_events_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.jsonl").write_text("")
    assert cli.main(["telemetry", "backfill", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert f"{tmp_path}: holds no events to backfill" in capsys.readouterr().err


def test_a_missing_promtool_names_the_debian_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _recorded(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli.main(["telemetry", "backfill", str(run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "promtool is not on PATH: install the Debian package prometheus" in err
    assert not (tmp_path / "b").exists()  # nothing done


def test_an_out_that_is_not_empty_or_not_writable_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _recorded(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "old-block").mkdir()
    assert cli.main(["telemetry", "backfill", str(run), "--out", str(full)]) == 2
    assert f"--out {full}: is not empty" in capsys.readouterr().err
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert cli.main(["telemetry", "backfill", str(run), "--out", str(blocked / "b")]) == 2
    assert f"--out {blocked / 'b'}: cannot write" in capsys.readouterr().err


def test_a_corrupt_line_fails_strict_and_is_named_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _recorded(tmp_path)
    with (run / "events.jsonl").open("a") as fh:
        fh.write("garbage\n")
    args = ["telemetry", "backfill", str(run)]
    assert cli.main([*args, "--strict", "--out", str(tmp_path / "s")]) == 1
    assert f"{run / 'events.jsonl'}:6: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    assert cli.main([*args, "--out", str(tmp_path / "l")]) == 0
    captured = capsys.readouterr()
    assert f"{run / 'events.jsonl'}:6: corrupt line" in captured.err
    assert "run r1 (one process): 5 events" in captured.out
    assert tsdb.blocks(tmp_path / "l")


def test_a_bad_align_start_or_retention_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["telemetry", "backfill", "x", "--out", "y", "--align-start", "yesterday"])
    assert info.value.code == 2
    assert "--align-start: expected an RFC 3339 time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["telemetry", "backfill", "x", "--out", "y", "--retention", "fortnight"])
    assert "--retention: expected a Prometheus duration" in capsys.readouterr().err


def test_an_old_run_warns_that_the_stacks_retention_would_delete_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _recorded(tmp_path)  # recorded at T0: 2026-12-01, days before the tests run
    assert cli.main(["telemetry", "backfill", str(run), "--out", str(tmp_path / "b"),
                     "--retention", "1d"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "days ago, longer than the retention of 1 days" in err
    assert "--storage.tsdb.retention.time=1d" in err
    assert os.listdir(tmp_path / "b")


def test_every_series_is_restated_every_minute_between_sparse_events() -> None:
    # PPO updates ten minutes apart: without restating, a query's 5-minute lookback would
    # find nothing between them, where a live scrape shows the value all along.
    events = _run()
    events[3] = _event((ET.SEED_GERMINATED, None), T0 + 600 * 10**9)
    events[4] = _event((ET.TRAINING_COMPLETED, None), T0 + 601 * 10**9, status="completed")
    (run,) = backfill_runs(events)
    t0 = T0 // 1_000_000
    points = _points(run, "esper_telemetry_events_total", event_type="SEED_GERMINATED")
    times = [t for t, _ in points]
    assert times[:3] == [t0 - 1, t0 + 1, t0 + 2]
    assert times[3:13] == [t0 + 60_000 * k for k in range(1, 11)]  # the value known, restated
    assert [v for t, v in points if t0 + 60_000 <= t <= t0 + 540_000] == [2.0] * 9
    assert points[-2:] == [(t0 + 600_000, 3.0), (t0 + 601_000, 3.0)]
    assert all(b - a <= 60_000 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("made_by_user", [True, False])
@pytest.mark.parametrize("stop", [KeyboardInterrupt, tsdb.ToolError("promtool failed")])
def test_a_backfill_that_does_not_finish_leaves_no_half_of_itself(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stop: BaseException | type[BaseException],
    made_by_user: bool,
) -> None:
    # Ctrl-C (or a tool failing, as on a full disk) after the blocks are written, before the
    # rules: blocks without their recording rules and ALERTS would pass for a whole backfill.
    run = _recorded(tmp_path)
    out = tmp_path / "out"
    if made_by_user:
        out.mkdir()

    def interrupted(*_args: object, **_kwargs: object) -> None:
        assert tsdb.blocks(out)  # the run's own blocks are there by now
        raise stop

    monkeypatch.setattr(tsdb, "backfill_recording_rules", interrupted)
    code = cli.main(["telemetry", "backfill", str(run), "--out", str(out)])
    assert code == (130 if stop is KeyboardInterrupt else 1)
    err = capsys.readouterr().err
    assert f"backfill did not finish; removed the partial {out}" in err
    assert "Traceback" not in err
    if made_by_user:
        assert out.is_dir()
        assert not list(out.iterdir())  # the directory the user made stays, empty
    else:
        assert not out.exists(), "the directory backfill made is gone, not left empty"


def test_at_rank_detail_the_envs_are_folded_at_every_event_as_live() -> None:
    """``--metrics-detail rank``: the samples are the folds, each at the event that changed
    them (a folded gauge is folded after every event), and no series by env."""
    events = _run()[:1]
    for i, (env, accuracy) in enumerate([(0, 50.0), (1, 70.0), (0, 90.0)]):
        events.append(_event((ET.EPOCH_COMPLETED, "env"), T0 + (i + 1) * 1_000_000_000,
                             env_id=env, val_accuracy=accuracy, seeds={}))  # fmt: skip
    (run,) = backfill_runs(events, detail=MetricDetail.RANK)
    t0 = T0 // 1_000_000
    mean = _points(run, "esper_env_val_accuracy", stat="mean")
    assert mean == [(t0 + 1000, 0.5), (t0 + 2000, 0.6), (t0 + 3000, 0.8)]
    assert _points(run, "esper_env_val_accuracy", stat="min")[-1] == (t0 + 3000, 0.7)
    epochs = _points(run, "esper_env_epochs_total")
    assert epochs[-1] == (t0 + 3000, 3.0)  # both envs' epochs, summed
    assert not any("env_id" in dict(sid.labels) for sid in run.samples)
