"""The Sanctum terminal UI, driven headless by Textual's pilot over a recorded run."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from esper.karn.sanctum import SanctumSnapshot
from esper.karn.sanctum.app import SanctumApp
from esper.scripts import cli
from esper.scripts import train as train_script
from esper.scripts.sanctum import load

DATA = Path(__file__).resolve().parents[1] / "data" / "sanctum_run"
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "sanctum_main.svg"
SIZE = (150, 48)


def _drive(app: SanctumApp) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            return {
                "header": str(app.query_one("#run-header", Static).render()),
                "tamiyo": str(app.query_one("#tamiyo", Static).render()),
                "envs": _rows(app.query_one("#envs", DataTable)),
                "seeds": _rows(app.query_one("#seeds", DataTable)),
                "events": _rows(app.query_one("#events", DataTable)),
                "svg": app.export_screenshot(),
            }

    return asyncio.run(run())


def _rows(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.fixture(scope="module")
def recorded() -> tuple[SanctumSnapshot, dict[str, Any]]:
    aggregator, problems = load(DATA)
    assert problems == []
    return aggregator.get_snapshot(), _drive(SanctumApp(aggregator.get_snapshot, interval=3600))


def test_run_header_shows_the_runs_config_and_progress(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    snap, ui = recorded
    c = snap.run_config
    assert c.run_id in ui["header"]
    assert f"{c.mode} on {c.task}" in ui["header"]
    assert f"episodes {snap.episodes_completed}/{snap.batch_total_episodes}" in ui["header"]
    assert f"param budget {c.param_budget:,}" in ui["header"]
    assert "status: completed" in ui["header"]


def test_env_overview_has_a_row_per_env_with_its_values(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    snap, ui = recorded
    assert [row[0] for row in ui["envs"]] == [str(e) for e in sorted(snap.envs)]
    for row in ui["envs"]:
        env = snap.envs[int(row[0])]
        assert row[3] == f"{env.val_accuracy:.2f}"
        assert row[7] == str(env.rollbacks)
    assert any(int(row[7]) > 0 for row in ui["envs"]), "the recorded run had a rollback"


def test_tamiyo_panel_shows_losses_entropy_per_head_grad_norm_and_update_time(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    snap, ui = recorded
    t = snap.tamiyo
    for text in (f"policy loss {t.policy_loss:.4f}", f"grad norm {t.grad_norm:.3f}",
                 f"update {t.update_time_ms:.1f} ms", f"op {t.head_op_entropy:.2f}"):  # fmt: skip
        assert text in ui["tamiyo"].replace("\n", " "), text


def test_seed_lifecycle_lists_every_seed_with_stage_and_outcome(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    snap, ui = recorded
    expected = {
        (str(e), s.seed_id, s.stage) for e, env in snap.envs.items() for s in env.seeds.values()
    }
    assert {(r[0], r[2], r[4]) for r in ui["seeds"]} == expected
    assert any("culled (controller)" in r[-1] for r in ui["seeds"])


def test_event_log_shows_cull_reasons_and_improvements(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    _, ui = recorded
    culls = [r for r in ui["events"] if r[1] == "SEED_CULLED"]
    assert culls
    assert all("reason=" in r[4] and "improvement=" in r[4] for r in culls)


def test_main_screen_matches_the_committed_svg_snapshot(
    recorded: tuple[SanctumSnapshot, dict[str, Any]],
) -> None:
    _, ui = recorded
    if os.environ.get("ESPER_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(ui["svg"], encoding="utf-8")
    assert SNAPSHOT.read_text(encoding="utf-8") == ui["svg"], (
        "the Sanctum main screen changed: look at it, then ESPER_UPDATE_SNAPSHOTS=1 pytest"
    )


def test_esper_sanctum_names_a_missing_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["sanctum", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


@pytest.mark.slow
def test_live_sanctum_watches_a_training_run_to_its_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    class HeadlessSanctum(SanctumApp):
        def run(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            async def drive() -> None:
                async with self.run_test(size=SIZE) as pilot:
                    deadline = time.monotonic() + 300
                    while not self.source().completed and time.monotonic() < deadline:
                        await pilot.pause(0.2)
                    self.action_refresh_view()
                    seen["header"] = str(self.query_one("#run-header", Static).render())
                    seen["updates"] = self.source().tamiyo.updates

            asyncio.run(drive())

    monkeypatch.setattr(train_script, "SanctumApp", HeadlessSanctum)
    monkeypatch.setattr(train_script, "has_terminal", lambda: True)  # the pilot is its terminal
    code = train_script.main(["ppo", "--n-envs", "2", "--episodes", "2", "--max-epochs", "6",
                              "--sanctum", "--telemetry-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert "status: completed" in seen["header"]
    assert seen["updates"] == 1


def test_esper_sanctum_without_a_terminal_prints_the_summary_and_exits(tmp_path: Path) -> None:
    """Redirected (a pipe, a file, no keyboard), the full-screen view would never exit."""
    import subprocess
    import sys

    run = Path(__file__).resolve().parents[1] / "data" / "sanctum_run"
    with (tmp_path / "out.txt").open("w") as out:
        done = subprocess.run([sys.executable, "-m", "esper.scripts.cli", "sanctum", str(run)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "esper sanctum: not a terminal" in done.stderr
    text = (tmp_path / "out.txt").read_text()
    assert "status: completed" in text
    assert "EPOCH_COMPLETED" in text


def test_train_with_sanctum_and_no_terminal_is_a_usage_error_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redirected, the view would wait for a key forever after training ended."""
    with pytest.raises(SystemExit) as exit_:
        train_script.main(["ppo", "--sanctum", "--telemetry-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert "argument --sanctum: needs a terminal" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
