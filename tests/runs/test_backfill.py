"""Backfill against the live truth: the stack's real run, scraped every second by a real
Prometheus, is backfilled from its JSONL, and a second real Prometheus serves only the blocks.
Every panel answers from the blocks; every counter ends where the record and the live scrape
end; every gauge the live Prometheus scraped has the backfilled value at that instant."""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from esper.karn.grafana import (
    DASHBOARDS,
    GPU_DASHBOARD,
    REQUIRES_CUDA,
    REQUIRES_RANKS,
    panel_queries,
)
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import read_events
from esper.nissa.prometheus.backfill import ACCOUNTED
from esper.nissa.prometheus.catalogue import METRICS, MetricKind
from esper.nissa.prometheus.mapping import read_at_scrape
from tests._stack import REPO, Stack, panel_promql, query, query_range, serving_blocks

ET = TelemetryEventType
pytestmark = pytest.mark.slow

NOT_IN_THE_RECORD = tuple(
    m.family for m in METRICS if read_at_scrape(m) and m.family not in ACCOUNTED.values()
)
"""Families read when scraped that the record cannot restate (CUDA memory): never invented."""

LIVE_LAG_SECONDS = 2.0
"""A live scrape is stamped when it starts and reads what the hub has delivered by then. The
hub pumps every 50 ms, and at debug level on two busy cores the exporter was seen 0.10 to
0.22 s behind the record (in 2 to 5% of scrapes; the rest matched at the instant). A live
value must be one the backfilled series held within this window of the scrape: a live view
further behind than that would be a bug of its own."""


def esper(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper.scripts.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class Backfilled:
    stack: Stack
    blocks: str
    """Base URL of the Prometheus serving only the backfilled blocks."""
    out: subprocess.CompletedProcess[str]
    events: list[TelemetryEvent]
    openmetrics: Path


@pytest.fixture(scope="module")
def backfilled(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfilled]:
    tmp = tmp_path_factory.mktemp("backfill")
    om = tmp / "run.om"
    out = esper("telemetry", "backfill", str(stack.run_dir), "--out", str(tmp / "blocks"),
                "--alerts", "--openmetrics", str(om))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    with serving_blocks(tmp / "prom", tmp / "blocks") as base:
        yield Backfilled(stack, base, out, read_events(stack.run_dir).events, om)


def _all(base: str, at: float) -> list[dict[str, Any]]:
    """Every raw sample of every esper series, as of ``at``."""
    return query(base, f'{{__name__=~"esper_.+", job="esper-trainer"}}[1h] @ {at:.3f}')


def _key(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A series' labels without the instance (live: host:port; backfilled: the recording)."""
    return tuple(sorted((k, v) for k, v in metric.items() if k != "instance"))


Series = dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]


def _series(base: str, at: float) -> Series:
    return {
        _key(s["metric"]): [(float(t), float(v)) for t, v in s["values"]] for s in _all(base, at)
    }


def _end(b: Backfilled) -> float:
    return b.events[-1].timestamp_ns / 1e9 + 1


def _live_and_backfilled(b: Backfilled) -> tuple[Series, Series]:
    """Every series as the live Prometheus scraped it, and as the blocks hold it."""
    return _series(b.stack.prometheus, b.stack.finished + 5), _series(b.blocks, _end(b))


def _panels(
    base: str, run: str | None, start: float, end: float
) -> tuple[int, list[str], list[str]]:
    """(panels that answered, panels that did not, panels the record cannot answer) of the
    four dashboards, over [start, end] from the Prometheus at ``base``."""
    checked, silent, unknowable = 0, [], []
    for name in DASHBOARDS:
        if name == GPU_DASHBOARD:
            continue  # CUDA and DCGM series exist only while a process runs
        for title, desc, uid, expr in panel_queries((REPO / "dashboards" / name).read_text()):
            if uid != "esper-prometheus" or REQUIRES_CUDA in desc or REQUIRES_RANKS in desc:
                continue  # traces: Tempo; ranks: tests/runs/test_distributed.py
            promql = panel_promql(expr, run)
            answered = query_range(base, promql, start, end)
            if re.search("|".join(NOT_IN_THE_RECORD), expr):
                unknowable.append(title)
                assert not answered, (name, title)  # never invented
                continue
            if answered:
                checked += 1
            else:
                silent.append(f"{name} / {title}: {promql}")
    return checked, silent, unknowable


def test_every_panel_of_the_four_dashboards_answers_from_the_blocks_alone(
    backfilled: Backfilled,
) -> None:
    b = backfilled
    run = b.events[0].run_id
    start, end = b.events[0].timestamp_ns / 1e9, _end(b)
    checked, silent, unknowable = _panels(b.blocks, run, start, end)
    assert silent == [], "\n".join(silent)
    assert checked >= 40
    # The telemetry-loss panels draw too: the record carries the drop and loss counts.
    assert unknowable == [], unknowable


def test_a_run_shorter_than_a_rules_window_draws_its_quantiles_and_rates_from_the_blocks(
    tmp_path: Path,
) -> None:
    """A live Prometheus goes on evaluating rate(...[5m]) after a few-second run's last
    sample; the backfilled rules do too, so the quantile and rate panels draw from the
    blocks (before, the step-time and dataloader quantiles and culls by reason were empty)."""
    run = esper("train", "ppo", "--n-envs", "4", "--episodes", "4", "--max-epochs", "10",
                "--seed", "3", "--inject-fault", "nan-loss@5", "--no-report",
                "--telemetry-dir", str(tmp_path / "run"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    events = read_events(tmp_path / "run").events
    assert any(e.event_type is ET.SEED_CULLED for e in events)
    start, last = events[0].timestamp_ns / 1e9, events[-1].timestamp_ns / 1e9
    assert last - start < 60, "a run far shorter than the rules' 5-minute windows"
    out = esper("telemetry", "backfill", str(tmp_path / "run"), "--out", str(tmp_path / "blocks"))
    assert out.returncode == 0, out.stderr
    with serving_blocks(tmp_path / "prom", tmp_path / "blocks") as base:
        checked, silent, _unknowable = _panels(base, events[0].run_id, start, last + 300)
        assert silent == [], "\n".join(silent)
        assert checked >= 40
        # Raw samples recorded after the run's last event (a range at an instant: no lookback).
        after = f"[{250}s] @ {last + 260:.3f}"
        for rule in ("esper:env_step_duration_seconds:p50", "esper:env_step_duration_seconds:p95",
                     "esper:dataloader_wait_seconds:p95", "esper:seed_culled:rate5m"):  # fmt: skip
            assert query(base, rule + after), f"{rule}: no samples after the run's end"
        # A gauge's rule has no tail: a live server sees the gauge go stale with its target.
        assert query(base, "esper:run_env_val_accuracy:mean" + after) == []


def test_every_counter_ends_at_the_records_count_and_the_live_last_value(
    backfilled: Backfilled,
) -> None:
    b = backfilled
    live, back = _live_and_backfilled(b)
    counters = {
        k: points for k, points in back.items()
        if dict(k)["__name__"].endswith(("_total", "_count", "_sum", "_bucket"))
    }  # fmt: skip
    assert len(counters) > 100
    for key, points in counters.items():
        assert key in live, key
        assert points[-1][1] == live[key][-1][1], key
    for key in live:  # nothing the live run served is missing, but what the record cannot hold
        name = dict(key)["__name__"]
        if not name.endswith("_created") and not name.startswith(NOT_IN_THE_RECORD):
            assert key in back, key

    def final(name: str, **labels: str) -> float:
        return sum(
            points[-1][1] for k, points in back.items()
            if dict(k)["__name__"] == name and labels.items() <= dict(k).items()
        )  # fmt: skip

    events = b.events
    by_type = Counter(e.event_type.name for e in events)
    for event_type, n in by_type.items():
        assert final("esper_telemetry_events_total", event_type=event_type) == n, event_type
    batches = [e for e in events if e.event_type is ET.BATCH_EPOCH_COMPLETED]
    assert final("esper_episodes_completed_total") == batches[-1].data["episodes_completed"]
    germinated = Counter(e.data["blueprint_id"] for e in events
                         if e.event_type is ET.SEED_GERMINATED)  # fmt: skip
    assert germinated
    for blueprint, n in germinated.items():
        assert final("esper_seed_germinated_total", blueprint_id=blueprint) == n
    culled = Counter(e.data["reason"] for e in events if e.event_type is ET.SEED_CULLED)
    for reason, n in culled.items():
        assert final("esper_seed_culled_total", reason=reason) == n
    anomalies = Counter((e.data["scope"], e.data["kind"]) for e in events
                        if e.event_type is ET.GRADIENT_ANOMALY)  # fmt: skip
    assert anomalies  # the stack's run injects exploding gradients and a NaN loss
    for (scope, kind), n in anomalies.items():
        assert final("esper_gradient_anomalies_total", scope=scope, kind=kind) == n
    rollbacks = by_type[ET.GOVERNOR_ROLLBACK.name]
    assert rollbacks
    assert final("esper_governor_rollbacks_total") == rollbacks
    updates = [e for e in events if e.event_type is ET.PPO_UPDATE_COMPLETED]
    assert final("esper_ppo_updates_total") == len(updates)
    assert final("esper_ppo_update_duration_seconds_count") == len(updates)  # observed once


def _same(a: float | None, b: float | None) -> bool:
    """Equal, with NaN equal to NaN (a NaN loss is a value the record and the scrape share)."""
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _value_at(points: list[tuple[float, float]], t: float) -> float | None:
    i = bisect.bisect_right([p[0] for p in points], t)
    return None if i == 0 else points[i - 1][1]


def test_every_gauge_the_live_prometheus_scraped_has_the_backfilled_value(
    backfilled: Backfilled,
) -> None:
    b = backfilled
    live, back = _live_and_backfilled(b)
    gauges = {m.name for m in METRICS if m.kind is MetricKind.GAUGE and not read_at_scrape(m)}
    first, last = b.events[0].timestamp_ns / 1e9, b.events[-1].timestamp_ns / 1e9
    compared = exact = 0
    for key, points in live.items():
        if dict(key)["__name__"] not in gauges:
            continue
        assert key in back, key
        mine = back[key]
        for t, v in points:
            if not first <= t <= last:
                continue  # before the first event, or the linger after the last
            compared += 1
            if _same(_value_at(mine, t), v):
                exact += 1
                continue
            near = {
                value for when, value in mine if t - LIVE_LAG_SECONDS < when <= t + LIVE_LAG_SECONDS
            }
            near.add(_value_at(mine, t - LIVE_LAG_SECONDS))
            assert any(_same(v, n) for n in near), (key, t, v, _value_at(mine, t))
    assert compared > 200
    assert exact > compared / 2, (exact, compared)  # most scrapes fall between events


def test_alerts_lists_what_fired_live_at_the_faults_time(backfilled: Backfilled) -> None:
    b = backfilled
    out = b.out.stdout
    anomalies = {
        e.data["kind"]: e.timestamp_ns / 1e9
        for e in reversed(b.events)
        if e.event_type is ET.GRADIENT_ANOMALY
    }  # fmt: skip (the first of each kind)
    fired = re.findall(r"(Esper\w+) at (\S+) \(\+([\d.]+) s\)", out)
    names = {name for name, *_ in fired}
    assert {"EsperExplodingGradients", "EsperNaNGradients"} <= names, out
    start = b.events[0].timestamp_ns / 1e9
    for name, kind in (("EsperExplodingGradients", "exploding"), ("EsperNaNGradients", "nan")):
        offset = min(float(o) for n, _, o in fired if n == name)
        # Evaluated every second from the run's start: at the first evaluation after the event.
        assert anomalies[kind] - start <= offset + 0.001 <= anomalies[kind] - start + 1.001
    webhook_alerts = {a["labels"]["alertname"] for a in b.stack.webhook.alerts}
    assert names <= webhook_alerts | {"EsperLossSpikes", "EsperGovernorRollbackStorm"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two clean short runs, recorded one after the other."""
    tmp = tmp_path_factory.mktemp("two-runs")
    dirs = []
    for seed in ("4", "5"):
        run = esper("train", "ppo", "--n-envs", "2", "--episodes", "2", "--max-epochs", "5",
                    "--seed", seed, "--telemetry-dir", str(tmp / seed))  # fmt: skip
        assert run.returncode == 0, run.stderr
        (run_dir,) = (tmp / seed).iterdir()
        dirs.append(run_dir)
    return dirs


def test_a_clean_run_would_have_fired_no_training_alert(
    two_runs: list[Path], tmp_path: Path
) -> None:
    out = esper("telemetry", "backfill", str(two_runs[0]), "--out", str(tmp_path / "blocks"),
                "--alerts")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"alerts the shipped rules would have fired:\n  run \S+: none\n", out.stdout)
    assert not re.search(r"Esper\w+ at ", out.stdout), out.stdout


def test_runs_recorded_apart_overlay_from_one_instant_keeping_their_real_starts(
    two_runs: list[Path], tmp_path: Path
) -> None:
    records = [read_events(d).events for d in two_runs]
    assert records[1][0].timestamp_ns > records[0][-1].timestamp_ns  # one after the other
    at = round(time.time()) - 3600
    out = esper("telemetry", "backfill", *map(str, two_runs), "--out", str(tmp_path / "blocks"),
                "--align-start", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("placed at --align-start") == 2
    with serving_blocks(tmp_path / "prom", tmp_path / "blocks") as base:
        info = query(base, f"esper_run_info @ {at + 0.5}")
        starts = {s["metric"]["run_id"]: s["metric"]["recorded_start"] for s in info}
        assert starts == {
            events[0].run_id: datetime.fromtimestamp(events[0].timestamp_ns / 1e9, UTC)
            .isoformat(timespec="milliseconds")
            for events in records
        }  # fmt: skip
        for events in records:  # each run's shape, moved and not stretched
            run_id = events[0].run_id
            batches = [e for e in events if e.event_type is ET.BATCH_EPOCH_COMPLETED]
            offset = (batches[-1].timestamp_ns - events[0].timestamp_ns) / 1e9
            promql = f'esper_episodes_completed_total{{run_id="{run_id}"}} @ {at + offset + 0.01}'
            (series,) = query(base, promql)
            assert float(series["value"][1]) == batches[-1].data["episodes_completed"]
            before = f'esper_episodes_completed_total{{run_id="{run_id}"}} @ {at + offset - 0.01}'
            assert float(query(base, before)[0]["value"][1]) < float(series["value"][1])


def test_a_killed_run_is_backfilled_up_to_its_last_event(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper.scripts.cli", "train", "ppo", "--n-envs", "2",
         "--episodes", "40", "--max-epochs", "5", "--telemetry-dir", str(tmp_path / "runs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the record holds a finished batch
            files = list((tmp_path / "runs").glob("*/events.jsonl"))
            if files and "BATCH_EPOCH_COMPLETED" in files[0].read_text():
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    events = read_events(tmp_path / "runs").events
    out = esper("telemetry", "backfill", str(tmp_path / "runs"), "--out", str(tmp_path / "b"),
                "--openmetrics", str(tmp_path / "run.om"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "status: unfinished" in out.stdout, out.stdout
    assert "did not finish: its series stop at its last event" in out.stderr
    lines = (tmp_path / "run.om").read_text().splitlines()
    stamps = [float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")]
    assert max(stamps) == (events[-1].timestamp_ns // 1_000_000) / 1000
    assert min(stamps) == (events[0].timestamp_ns // 1_000_000 - 1) / 1000


def test_the_report_draws_the_alerts_backfill_lists_for_the_same_record(
    backfilled: Backfilled, tmp_path: Path
) -> None:
    listed = set(re.findall(r"^  run \S+: (Esper\w+) at ", backfilled.out.stdout, re.M))
    assert listed, "the fault-injected run should have fired alerts"
    out = tmp_path / "report.html"
    done = esper("report", str(backfilled.stack.run_dir), "--alerts", "-o", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    table = re.search(r"<table class='grid alerts'>(.*?)</table>", page, re.S)
    assert table is not None
    drawn = set(re.findall(r"<tr><td>(Esper\w+)", table.group(1)))
    assert drawn == listed
    m = re.search(r'<script id="esper-data" type="application/json">(.*?)</script>', page, re.S)
    assert m is not None
    bands = [b for b in json.loads(m.group(1))["bands"] if b["kind"] == "alert"]
    assert {b["label"].split(" ")[0] for b in bands} == listed
    assert all(0 <= b["t0"] <= b["t1"] for b in bands)


def test_the_report_of_a_clean_run_says_no_alert_would_have_fired(
    two_runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    done = esper("report", str(two_runs[0]), "--alerts", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "alerts that would have fired: 0" in done.stdout
    assert "No shipped alert would have fired." in out.read_text()
