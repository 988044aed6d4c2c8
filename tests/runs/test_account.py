"""The record carries the telemetry's own accounting as numbers: every TELEMETRY_WARNING about
drops or losses, and TELEMETRY_CLOSED at the end, so a reader restates the verdict exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import NissaHub, read_events
from esper.nissa.backends import BackendSpec
from esper.nissa.prometheus.backfill import backfill_runs
from esper.runs.session import RunSession
from esper.scripts import telemetry

ET = TelemetryEventType


def _dropping_run(tmp_path: Path) -> tuple[RunSession, list[TelemetryEvent]]:
    """A run whose queues of 16 overflow: a burst of 2,000 high-rate events drops some."""
    hub = NissaHub(capacity=16, backend_capacity=16, schedule_delay=1.0)
    session = RunSession(BackendSpec(telemetry_dir=tmp_path), hub=hub, announce=False,
                         run_id="run-drops")  # fmt: skip
    hub.emit(make_event(ET.TRAINING_STARTED, example_payload(ET.TRAINING_STARTED)))
    for i in range(2000):
        hub.emit(make_event(ET.EPOCH_COMPLETED, example_payload(ET.EPOCH_COMPLETED, "env",
                                                                env_id=i % 4)))  # fmt: skip
    session.close(account=True)
    return session, read_events(tmp_path).events


def test_the_closing_account_restates_what_each_backend_kept(tmp_path: Path) -> None:
    session, events = _dropping_run(tmp_path)
    final = session.hub.stats()
    assert not final.complete  # the case: events were dropped
    (closed,) = [e for e in events if e.event_type is ET.TELEMETRY_CLOSED]
    assert events[-1] is closed, "the account is the record's last event"
    d = closed.data
    assert d["complete"] is False
    assert d["dropped"] == final.dropped_by_backend()
    assert d["lost"] == final.lost_by_backend()
    (dir_name,) = [b.name for b in final.backends]
    # The JSONL backend delivered exactly the lines before the account: the record agrees.
    assert d["delivered"][dir_name] == len(events) - 1
    assert d["emitted"] == final.emitted - 1
    assert d["emitted"] == d["delivered"][dir_name] + d["dropped"]["hub"] + d["dropped"][dir_name]


def test_every_drop_warning_carries_the_counts_as_numbers(tmp_path: Path) -> None:
    _session, events = _dropping_run(tmp_path)
    warnings = [e for e in events if e.event_type is ET.TELEMETRY_WARNING
                and e.data["reason"] == "events_dropped"]  # fmt: skip
    assert warnings
    closed = events[-1].data
    previous = 0
    for w in warnings:
        total = sum(w.data["dropped"].values())
        assert total >= previous, "cumulative: the counts only go up"
        previous = total
        assert f"({total} in all)" in w.data["detail"]  # the words and the numbers agree
    assert previous <= sum(closed["dropped"].values())


def test_summarize_and_backfill_restate_the_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _session, events = _dropping_run(tmp_path)
    d = events[-1].data
    assert telemetry.main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"telemetry account: {d['emitted']} events before it, EVENTS LOST" in out
    assert f"dropped at the hub: {d['dropped']['hub']}" in out
    (run,) = backfill_runs(events)
    finals = {dict(sid.labels)["backend"]: points[-1][1] for sid, points in run.samples.items()
              if sid.name == "esper_telemetry_events_dropped_total"}  # fmt: skip
    assert finals == {k: float(v) for k, v in d["dropped"].items()}
    for sid, points in run.samples.items():
        if sid.name == "esper_telemetry_events_dropped_total":
            values = [v for _, v in points]
            assert values == sorted(values), "a counter never goes down"


def test_a_replay_sends_the_recorded_account_and_adds_none(tmp_path: Path) -> None:
    _session, events = _dropping_run(tmp_path / "run")
    out = tmp_path / "copy.jsonl"
    assert telemetry.main(["replay", str(tmp_path / "run"), "--telemetry-file", str(out)]) == 0
    copied = read_events(out).events
    assert [e.event_type for e in copied].count(ET.TELEMETRY_CLOSED) == 1
    assert copied[-1].data == events[-1].data


def test_the_report_shows_each_backends_final_counts(tmp_path: Path) -> None:
    import re

    from esper.scripts import report

    session, events = _dropping_run(tmp_path / "run")
    d = events[-1].data
    assert report.main([str(tmp_path / "run"), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    table = re.search(r"<table class='grid backends'>(.*?)</table>", html, re.S)
    assert table is not None
    (name,) = d["delivered"]
    row = re.search(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", table.group(1))
    assert row is not None
    cells = re.findall(r"<td>([^<]*)</td>", row.group(1))
    assert cells[1:4] == [f"{d['delivered'][name]:,}", f"{d['dropped'][name]:,}",
                          f"{d['failed'][name]:,}"]  # fmt: skip
    assert "The record carries no final counts" not in html
    assert session is not None
