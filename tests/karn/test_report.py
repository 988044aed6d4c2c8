"""``esper report`` without a browser: what the page holds, against the JSONL read by hand, and
how bad input is refused. (``test_report_browser.py`` opens the page in Chromium.)"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from esper.karn.report import MAX_POINTS, Series, build_report
from esper.karn.report.assets import UPLOT_ENV, uplot_dist
from esper.karn.report.page import page_data
from esper.scripts import report as report_cli

RUN = Path(__file__).resolve().parents[1] / "data" / "sanctum_run"


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def embedded(html: str) -> dict[str, Any]:
    """The data the page's script draws, as the page carries it."""
    m = re.search(r'<script id="esper-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no embedded data"
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def chart(data: dict[str, Any], chart_id: str) -> dict[str, Any]:
    return next(c for c in data["charts"] if c["id"] == chart_id)


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "telemetry_2026-12-01_120000"
    shutil.copytree(RUN, dst)
    return dst


def test_every_curve_holds_every_point_the_record_implies(run_copy: Path) -> None:
    lines = jsonl(run_copy / "events.jsonl")
    epochs = [e for e in lines if e["event_type"] == "EPOCH_COMPLETED"]
    envs = Counter(e["data"]["env_id"] for e in epochs if e["data"]["scope"] == "env")
    updates = [e for e in lines if e["event_type"] == "PPO_UPDATE_COMPLETED"]
    assert envs
    assert updates
    assert report_cli.main([str(run_copy)]) == 0
    data = embedded((run_copy / "report.html").read_text())
    for chart_id in ("val_accuracy", "val_loss", "train_loss", "host_grad_norm"):
        got = {s["label"]: len(s["y"]) for s in chart(data, chart_id)["series"]}
        assert got == {f"env {k}": n for k, n in envs.items()}, chart_id
    kl = chart(data, "ppo_kl")["series"]
    assert [s["y"] for s in kl] == [[pytest.approx(e["data"]["kl_divergence"], rel=1e-5)
                                     for e in updates]]  # fmt: skip
    heads = {
        k[5:-8] for k in updates[0]["data"] if k.startswith("head_") and k.endswith("_entropy")
    }
    assert {s["label"] for s in chart(data, "ppo_entropy")["series"]} == {"total", *heads}


def test_the_table_gives_min_max_and_last_of_every_point(run_copy: Path) -> None:
    lines = jsonl(run_copy / "events.jsonl")
    env0 = [e["data"]["val_accuracy"] for e in lines if e["event_type"] == "EPOCH_COMPLETED"
            and e["data"]["scope"] == "env" and e["data"]["env_id"] == 0]  # fmt: skip
    report = build_report(run_copy)
    (series,) = [
        s for s in report.runs[0].series if (s.chart, s.label) == ("val_accuracy", "env 0")
    ]
    assert series.stats() == {"count": len(env0), "nonfinite": 0, "min": min(env0),
                              "max": max(env0), "last": env0[-1]}  # fmt: skip
    html = report.html()
    row = re.search(r"<tr><td>env 0</td><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td>", html)
    assert row
    assert row.groups() == (str(len(env0)), f"{min(env0):.4g}", f"{max(env0):.4g}")


def test_a_long_series_is_thinned_for_drawing_but_keeps_every_peak() -> None:
    s = Series("val_loss", "env 0", 0)
    n = 50_000
    for i in range(n):
        y = math.sin(i / 300.0)
        if i == 31_337:
            y = 1e6  # one spike among thousands of ordinary points
        if i == 40_000:
            y = math.nan
        s.add(i * 0.1, i / 1000, y)
    keep, thinned = s.drawn()
    assert thinned
    assert len(keep) <= MAX_POINTS + 2
    assert 31_337 in keep
    assert 0 in keep
    assert n - 1 in keep
    assert 40_000 in keep, "a non-finite point stays, drawn as a gap"
    assert s.stats()["max"] == 1e6
    assert s.stats()["nonfinite"] == 1
    assert s.stats()["count"] == n


def test_every_anomaly_is_a_marker_at_its_epoch_and_a_row_of_the_table(run_copy: Path) -> None:
    lines = jsonl(run_copy / "events.jsonl")
    wrong = [e for e in lines if e["event_type"] in ("GRADIENT_ANOMALY", "GOVERNOR_ROLLBACK")]
    assert wrong
    report = build_report(run_copy)
    markers = report.runs[0].markers
    assert sorted((m.env, m.epoch) for m in markers) == sorted(
        (e["data"].get("env_id"), e["epoch"]) for e in wrong
    )
    data = page_data(report.runs, [])
    max_epochs = next(e for e in lines if e["event_type"] == "TRAINING_STARTED")["data"][
        "max_epochs"
    ]
    assert sorted(m["p"] for m in data["markers"]) == sorted(
        round(e["epoch"] / max_epochs, 5)
        for e in wrong  # all in batch 0 of this record
    )
    html = report.html()
    assert html.count("data-kind=") == len(wrong)
    for m in markers:  # every row names a span of the run's one trace
        assert re.fullmatch(r"[0-9a-f]{32}", m.trace_id)
        assert re.fullmatch(r"[0-9a-f]{16}", m.span_id)
    assert len({m.trace_id for m in markers}) == 1


def test_the_page_is_one_file_that_asks_for_nothing(run_copy: Path) -> None:
    html = build_report(run_copy).html()
    assert "default-src 'none'" in html  # the browser refuses every request the page could make
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=""", html, re.I)
    assert "uPlot" in html
    assert html.rstrip().endswith("</html>")


def test_seeds_are_drawn_stage_by_stage_with_their_gates(run_copy: Path) -> None:
    lines = jsonl(run_copy / "events.jsonl")
    germinated = [e for e in lines if e["event_type"] == "SEED_GERMINATED"]
    # A seed's life runs from SEED_GERMINATED to SEED_FOSSILIZED or SEED_CULLED (the embargo
    # and reset of its slot after a cull are the slot's, not the seed's).
    life: dict[str, tuple[int, float]] = {}
    for e in lines:
        sid = e["data"].get("seed_id")
        if e["event_type"] == "SEED_GERMINATED":
            life[sid] = (e["seq"], math.inf)
        elif e["event_type"] in ("SEED_FOSSILIZED", "SEED_CULLED"):
            life[sid] = (life[sid][0], e["seq"])

    def within(e: dict[str, Any]) -> bool:
        span = life.get(e["data"].get("seed_id"))
        return span is not None and span[0] < e["seq"] <= span[1]

    changes = [e for e in lines if e["event_type"] == "SEED_STAGE_CHANGED" and within(e)]
    gates = [e for e in lines if e["event_type"] == "SEED_GATE_EVALUATED" and within(e)]
    assert changes
    assert gates
    data = page_data(build_report(run_copy).runs, [])
    assert len(data["seeds"]) == len(germinated)
    assert sum(len(s["stages"]) for s in data["seeds"]) == len(germinated) + len(changes)
    assert sum(len(st[6]) for s in data["seeds"] for st in s["stages"]) == len(gates)
    culled = {e["data"]["seed_id"]: e["data"]["reason"] for e in lines
              if e["event_type"] == "SEED_CULLED"}  # fmt: skip
    assert {s["id"]: s["reason"] for s in data["seeds"] if s["outcome"] == "culled"} == culled


def test_several_runs_are_overlaid_each_named(run_copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    renamed = []
    for e in jsonl(run_copy / "events.jsonl"):
        e["run_id"] = "B-" + e["run_id"]
        renamed.append(json.dumps(e))
    (other / "events.jsonl").write_text("\n".join(renamed) + "\n")
    out = tmp_path / "both.html"
    assert report_cli.main([str(run_copy), str(other), "-o", str(out)]) == 0
    data = embedded(out.read_text())
    assert len(data["runs"]) == 2
    assert data["runs"][1]["id"].startswith("B-")
    assert data["runs"][0]["color"] != data["runs"][1]["color"]
    assert {s["run"] for s in chart(data, "val_accuracy")["series"]} == {0, 1}


def test_a_killed_run_is_reported_unfinished_up_to_its_last_event(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = run_copy / "events.jsonl"
    lines = events.read_text().splitlines()
    kept = [line for line in lines if '"TRAINING_COMPLETED"' not in line][:-3]
    events.write_text("\n".join(kept) + "\n" + lines[-4][:40])  # and a torn last line
    assert report_cli.main([str(run_copy)]) == 0
    html = (run_copy / "report.html").read_text()
    assert "data-state='unfinished'" in html
    assert "torn last line" in html
    assert "torn last line" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no events to report"),
        ("just some text\nnot json at all\n", "not a recorded run: none of its lines"),
    ],
)
def test_a_record_with_nothing_to_show_is_refused(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "events.jsonl"
    f.write_text(content)
    assert report_cli.main([str(f)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert str(f) in err
    assert "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_strict_names_the_corrupt_line(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = run_copy / "events.jsonl"
    lines = events.read_text().splitlines()
    lines[5] = "{broken"
    events.write_text("\n".join(lines) + "\n")
    assert report_cli.main([str(run_copy), "--strict"]) == 1
    assert f"{events}:6" in capsys.readouterr().err
    assert not (run_copy / "report.html").exists()
    assert report_cli.main([str(run_copy)]) == 0, "without --strict the line is skipped"


def test_an_output_that_is_the_record_is_refused_and_the_record_kept(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = run_copy / "events.jsonl"
    before = events.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(events)
    hard = tmp_path / "hard.jsonl"
    hard.hardlink_to(events)
    for out in (events, link, hard, Path("..") / run_copy.name / "events.jsonl"):
        code = report_cli.main([str(run_copy), "-o", str(out)]) if out.is_absolute() else None
        if code is None:  # a relative path to the same file
            import os

            cwd = os.getcwd()
            os.chdir(run_copy)
            try:
                code = report_cli.main([str(run_copy), "-o", str(out)])
            finally:
                os.chdir(cwd)
        assert code == 2
        assert "it would be overwritten" in capsys.readouterr().err
    assert events.read_bytes() == before


@pytest.mark.parametrize("where", ["missing-dir/r.html", "a-dir"])
def test_an_output_that_cannot_be_written_is_a_usage_error(
    run_copy: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-dir").mkdir()
    assert report_cli.main([str(run_copy), "-o", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert f"-o {tmp_path / where}" in err
    assert "Traceback" not in err


def test_a_read_only_output_directory_fails_cleanly_and_leaves_no_file(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = report_cli.main([str(run_copy), "-o", str(ro / "r.html")])
        err = capsys.readouterr().err
    finally:
        ro.chmod(0o700)
    import os

    if os.geteuid() == 0:  # root writes anywhere: the report is simply written
        assert code == 0
        return
    assert code == 1
    assert "r.html" in err
    assert list(ro.iterdir()) == []


def test_a_missing_charting_library_is_named_with_how_to_install_it(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(UPLOT_ENV, str(tmp_path / "nowhere"))
    assert report_cli.main([str(run_copy)]) == 1
    err = capsys.readouterr().err
    assert "uPlot 1.6.32 is not installed" in err
    assert "./dev setup" in err
    assert not (run_copy / "report.html").exists()


def test_the_pinned_library_is_what_set_up_installed() -> None:
    dist = uplot_dist()
    pkg = json.loads((dist.parent / "package.json").read_text())
    lock = json.loads(
        (Path(__file__).resolve().parents[2] / "js" / "package-lock.json").read_text()
    )
    assert pkg["version"] == lock["packages"]["node_modules/uplot"]["version"] == "1.6.32"


def _event(name: str, t: int, rank: int | None, epoch: int | None, **data: Any) -> Any:
    from esper.leyline import TelemetryEvent, TelemetryEventType

    return TelemetryEvent(event_type=TelemetryEventType[name], data=data, epoch=epoch,
                          rank=rank, run_id="r", timestamp_ns=1_000_000_000 * (t + 1))  # fmt: skip


def test_progress_is_each_processs_own_and_the_update_ends_its_batch() -> None:
    """Two ranks of 2-epoch episodes; only rank 0 writes BATCH_EPOCH_COMPLETED. A policy
    anomaly during the update (no epoch) belongs to the end of the batch just finished."""
    from esper.karn.report.model import build_run

    events, t = [], 0
    events.append(_event("TRAINING_STARTED", t, 0, None, max_epochs=2, world_size=2))
    for batch in (0, 1):
        for epoch in (1, 2):
            for rank in (0, 1):
                t += 1
                if epoch == 1 and batch == 1:
                    events.append(_event("GRADIENT_ANOMALY", t, rank, 1, scope="host",
                                         kind="nan", env_id=rank, value=None))  # fmt: skip
                env = {"env_id": rank, "val_accuracy": 50.0}
                events.append(_event("EPOCH_COMPLETED", t, rank, epoch, scope="env",
                                     inner_epoch=epoch, **env))  # fmt: skip
                agg = {"batch": batch, "epoch_seconds": 1.0}
                events.append(_event("EPOCH_COMPLETED", t, rank, epoch, scope="aggregate",
                                     inner_epoch=epoch, **agg))  # fmt: skip
        t += 1
        events.append(_event("GRADIENT_ANOMALY", t, 0, None, scope="policy", kind="exploding",
                             value=1e6))  # fmt: skip
        events.append(_event("BATCH_EPOCH_COMPLETED", t, 0, None, batch_idx=batch))
    view = build_run(0, events)
    for s in view.series:
        if s.chart == "val_accuracy":
            assert s.p == [0.5, 1.0, 1.5, 2.0], s.label
    marks = sorted((-1 if m.env is None else m.env, m.p, m.batch) for m in view.markers)
    assert marks == [(-1, 1.0, 0), (-1, 2.0, 1), (0, 1.5, 1), (1, 1.5, 1)]


def test_a_hostile_record_cannot_add_markup_or_script_to_the_page(run_copy: Path) -> None:
    """Strings from the record (run id, op names, messages) are text, never markup: a record
    naming an op ``</script><script>alert(1)</script>`` adds no element to the page."""
    from html.parser import HTMLParser

    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    lines = []
    for e in jsonl(run_copy / "events.jsonl"):
        e["run_id"] = f"run{evil}"
        if e["event_type"] == "ANALYTICS_SNAPSHOT" and e["data"]["kind"] == "action_distribution":
            e["data"]["action_counts"] = {evil: 3}
        lines.append(json.dumps(e))
    (run_copy / "events.jsonl").write_text("\n".join(lines) + "\n")
    html = build_report(run_copy).html()

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)

    parser = Tags()
    parser.feed(html)
    assert parser.tags.count("script") == 3  # the data, uPlot, the report's own
    assert parser.tags.count("img") == 0
    assert chart(embedded(html), "actions")["series"][0]["label"] == evil  # kept, as text
