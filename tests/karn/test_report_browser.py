"""The report of real fault-injected runs, opened from ``file://`` in Debian's headless Chromium
with the network off: what the page drew, read back from it, against the JSONL read by hand.

Screenshots of every section land in ``$ESPER_SCREENSHOT_DIR`` (or the test's temporary
directory), to be looked at.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import _browser
from tests._otlp import OTLPReceiver, ReceivedSpan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_browser.available() is not None, reason=str(_browser.available())),
]

TRAIN = ["ppo", "--n-envs", "2", "--episodes", "4", "--max-epochs", "8"]
FAULTS = ["--inject-fault", "exploding-gradients@3", "--inject-fault", "nan-loss@6"]
LOG_CHARTS = {"host_grad_norm", "seed_grad_norm"}


@dataclass
class Runs:
    faulty: Path
    faulty_out: str
    plain: Path
    plain_out: str
    spans: list[ReceivedSpan]
    shots: Path


def _train(
    runs: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", *TRAIN, "--telemetry-dir", str(runs), *flags],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("report")
    receiver = OTLPReceiver()
    try:
        a = _train(tmp / "a", "--seed", "1", *FAULTS, "--otlp-endpoint", receiver.endpoint)
        assert a.returncode == 0, a.stderr[-3000:]
        b = _train(tmp / "b", "--seed", "2", "--no-report")
        assert b.returncode == 0, b.stderr[-3000:]
        (faulty,) = (tmp / "a").iterdir()
        (plain,) = (tmp / "b").iterdir()
        shots = Path(os.environ.get("ESPER_SCREENSHOT_DIR") or tmp / "shots")
        yield Runs(faulty, a.stdout, plain, b.stdout, list(receiver.spans), shots)
    finally:
        receiver.close()


def jsonl(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def expected_points(lines: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:  # noqa: PLR0912
    """chart -> series label -> its values, read from the JSONL by hand."""
    out: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    rewards: dict[tuple[int, str], list[float]] = defaultdict(list)
    for e in lines:
        d, kind = e["data"], e["event_type"]
        if kind == "EPOCH_COMPLETED" and d["scope"] == "env":
            env = f"env {d['env_id']}"
            for chart, name in (
                ("val_accuracy", "val_accuracy"),
                ("val_loss", "val_loss"),
                ("train_loss", "train_loss"),
                ("host_grad_norm", "host_grad_norm"),
            ):
                out[chart][env].append(d[name])
            for slot, seed in d["seeds"].items():
                out["seed_grad_norm"][f"{env} {slot}"].append(seed["gradient_norm"])
        elif kind == "BATCH_EPOCH_COMPLETED":
            out["batch_accuracy"]["mean over envs"].append(d["avg_accuracy"])
            out["batch_accuracy"]["rolling"].append(d["rolling_accuracy"])
            out["batch_reward"]["mean episode reward"].append(d["avg_reward"])
        elif kind == "PPO_UPDATE_COMPLETED":
            for chart, name in (
                ("ppo_policy_loss", "policy_loss"),
                ("ppo_value_loss", "value_loss"),
                ("ppo_kl", "kl_divergence"),
                ("ppo_clip_fraction", "clip_fraction"),
                ("ppo_explained_variance", "explained_variance"),
                ("ppo_lr", "lr"),
            ):
                out[chart][name].append(d[name])
            out["ppo_entropy"]["total"].append(d["entropy"])
            out["ppo_grad_norm"]["total"].append(d["grad_norm"])
            for k, v in d.items():
                if k.startswith("head_") and k.endswith("_entropy"):
                    out["ppo_entropy"][k[5:-8]].append(v)
                elif k.startswith("head_") and k.endswith("_grad_norm"):
                    out["ppo_grad_norm"][k[5:-10]].append(v)
        elif kind == "ANALYTICS_SNAPSHOT" and d["kind"] == "throughput":
            env = f"env {d['env_id']}"
            out["step_time"][env].append(d["step_time_ms"])
            out["fps"][env].append(d["fps"])
            out["dataloader_wait"][env].append(d["dataloader_wait_ms"])
        elif kind == "ANALYTICS_SNAPSHOT" and d["kind"] == "action_distribution":
            for op, n in d["action_counts"].items():
                out["actions"][op].append(n)
        elif kind == "ANALYTICS_SNAPSHOT" and d["kind"] == "mask_hit_rates":
            for head, hits in d["mask_hits"].items():
                out["mask_hits"][head].append(hits / d["mask_total"][head])
        elif kind == "ANALYTICS_SNAPSHOT" and d["kind"] == "reward_summary":
            for name, v in d["summary"].items():
                rewards[(d["batch_idx"], name)].append(v)
    for (_batch, name), values in sorted(rewards.items()):
        out["reward_components"][name].append(sum(values) / len(values))
    return out


def expected_markers(lines: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(batch, epoch, progress) of every gradient anomaly, loss spike, rollback and
    regression cull, from the JSONL."""
    max_epochs = next(e for e in lines if e["event_type"] == "TRAINING_STARTED")["data"][
        "max_epochs"
    ]
    batch, found = 0, []
    for e in lines:
        kind = e["event_type"]
        wrong = kind in ("GRADIENT_ANOMALY", "GOVERNOR_ROLLBACK") or (
            kind == "SEED_CULLED" and e["data"]["reason"] == "blend_regression"
        )
        if wrong:
            found.append((batch, e["epoch"], round(batch + e["epoch"] / max_epochs, 5)))
        if kind == "BATCH_EPOCH_COMPLETED":
            batch = e["data"]["batch_idx"] + 1
    return sorted(found)


def test_train_writes_the_report_and_names_it(runs: Runs) -> None:
    assert f"run report: {runs.faulty / 'report.html'}" in runs.faulty_out
    assert not (runs.plain / "report.html").exists(), "--no-report writes none"
    assert "run report" not in runs.plain_out


def test_the_report_draws_every_point_offline_with_no_error_and_no_request(runs: Runs) -> None:
    lines = jsonl(runs.faulty)
    expected = expected_points(lines)
    page = runs.faulty / "report.html"
    with _browser.offline_chromium() as driver:
        drawn = _browser.open_report(driver, page)
        requests = _browser.requests_made(driver)
        errors = _browser.console_errors(driver)
        shots = _browser.screenshot_sections(driver, runs.shots / "faulty")
        png = driver.execute_script("return window.esperReport.png('val_loss')")
    assert drawn["errors"] == []
    assert errors == []
    assert requests == [page.resolve().as_uri()], "the page asked for something beyond itself"
    assert set(drawn["charts"]) == set(expected)
    for chart_id, want in expected.items():
        got = drawn["charts"][chart_id]
        assert [s["label"] for s in got["series"]] == list(want), chart_id
        assert [s["points"] for s in got["series"]] == [len(v) for v in want.values()], chart_id
        finite = [sum(1 for v in values if _finite(v) and (chart_id not in LOG_CHARTS or v > 0))
                  for values in want.values()]  # fmt: skip
        assert got["drawnPoints"] == finite, f"{chart_id}: points on the canvas"
    germinated = sum(1 for e in lines if e["event_type"] == "SEED_GERMINATED")
    assert drawn["timeline"]["0"]["seeds"] == germinated > 0
    assert {p.stem for p in shots} >= {"section-run", "section-training", "section-seeds",
                                       "section-wrong", "section-ppo"}  # fmt: skip
    assert all(p.stat().st_size > 5000 for p in shots)
    import base64
    import struct

    assert png.startswith("data:image/png;base64,")
    raw = base64.b64decode(png.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])  # the IHDR chunk
    assert width > 300, "the chart, with its title above it"
    assert height > 200


def test_anomaly_markers_sit_at_the_records_epochs_on_every_curve(runs: Runs) -> None:
    lines = jsonl(runs.faulty)
    want = expected_markers(lines)
    assert any(e["event_type"] == "GOVERNOR_ROLLBACK" for e in lines), "the fault did not fire"
    with _browser.offline_chromium() as driver:
        drawn = _browser.open_report(driver, runs.faulty / "report.html")
        by_progress = {k: v["markers"] for k, v in drawn["charts"].items()}
        driver.execute_script(
            "const s = document.getElementById('xmode'); s.value = 't';"
            "s.dispatchEvent(new Event('change'));"
        )
        by_time = driver.execute_script("return window.esperReport.charts")
        assert _browser.console_errors(driver) == []
    for chart_id, markers in by_progress.items():
        got = sorted((m["batch"], m["epoch"], m["x"]) for m in markers)
        assert got == [(b, e, pytest.approx(p, abs=1e-5)) for b, e, p in want], chart_id
    first = lines[0]["timestamp"]
    assert all(len(c["markers"]) == len(want) for c in by_time.values())
    assert first  # wall-time markers: every one inside the run, in order of the record
    times = sorted(m["x"] for m in by_time["val_loss"]["markers"])
    assert times[0] > 0
    assert times == sorted(times)


def test_every_trace_and_span_id_in_the_table_names_a_span_of_that_env_and_moment(
    runs: Runs,
) -> None:
    from selenium.webdriver.common.by import By

    spans = {(s.trace_id, s.span_id): s for s in runs.spans}
    with _browser.offline_chromium() as driver:
        _browser.open_report(driver, runs.faulty / "report.html")
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "table.anomalies tr[data-kind]")
        ]
    lines = jsonl(runs.faulty)
    assert len(rows) == len(expected_markers(lines)) > 0
    from datetime import datetime

    for time, _rank, env, _batch, _epoch, _kind, _what, _v, _t, trace_id, span_id in rows:
        span = spans.get((trace_id, span_id))
        assert span is not None, f"{trace_id}/{span_id} was not exported by the run"
        ns = int(datetime.fromisoformat(time).timestamp() * 1e9)
        assert span.start_ns - 1e6 <= ns <= span.end_ns + 1e6, "the span does not cover it"
        if env != "policy":
            assert span.name == "esper.episode"
            assert span.attributes["esper.env.id"] == int(env)


def test_two_runs_overlay_each_in_its_colour_named_in_the_legend(
    runs: Runs, tmp_path: Path
) -> None:
    from esper.scripts import report

    out = tmp_path / "both.html"
    assert report.main([str(runs.faulty), str(runs.plain), "-o", str(out)]) == 0
    ids = [jsonl(r)[0]["run_id"] for r in (runs.faulty, runs.plain)]
    with _browser.offline_chromium() as driver:
        drawn = _browser.open_report(driver, out)
        legend = driver.execute_script(
            "return document.querySelector('#chart-val_accuracy .u-legend').innerText"
        )
        assert _browser.console_errors(driver) == []
        assert drawn["errors"] == []
        _browser.screenshot_sections(driver, runs.shots / "overlay")
    assert {s["run"] for s in drawn["charts"]["val_accuracy"]["series"]} == {0, 1}
    assert all(run_id in legend for run_id in ids)
    assert drawn["timeline"]["0"]["seeds"] > 0
    assert "1" in drawn["timeline"]


def test_a_report_that_cannot_be_written_never_fails_the_run(tmp_path: Path) -> None:
    r = _train(
        tmp_path / "runs", "--episodes", "2", env={"ESPER_UPLOT_DIR": str(tmp_path / "none")}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: report not written: uPlot 1.6.32 is not installed" in r.stderr
    assert "esper report" in r.stderr
    assert "Traceback" not in r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["events.jsonl"], "no partial report"
