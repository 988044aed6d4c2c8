"""Loading recorded runs into the stack (README: "Look at a recorded run in Grafana"), as far
as a machine without a Docker engine allows: the loader service's mounts are read from the
compose file, its command runs with those mounts rebuilt as folders, and a real Prometheus that
is already running loads the copied blocks without a restart."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from esper.nissa.prometheus import tsdb
from esper.scripts import cli
from tests._stack import REPO, Stack, query, serving_blocks, wait_until


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def test_the_loader_reads_the_recorded_folder_and_writes_prometheus_data_volume(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    loader = services["load-recorded"]
    assert loader["profiles"] == ["recorded"]  # never started by a plain `up`
    assert loader["image"] == services["prometheus"]["image"]  # Prometheus's own user
    assert "${ESPER_RECORDED_DIR:-./recorded}:/recorded:ro" in loader["volumes"]
    data = next(a.split("=", 1)[1] for a in services["prometheus"]["command"]
                if a.startswith("--storage.tsdb.path="))  # fmt: skip
    assert f"prometheus-data:{data}" in loader["volumes"]
    assert f"prometheus-data:{data}" in services["prometheus"]["volumes"]
    assert (REPO / "recorded" / ".gitignore").read_text().startswith("*\n")


def _loader_script(compose: dict[str, Any], recorded: Path, data: Path) -> str:
    """The loader's command as its container's shell would run it, with the mounts rebuilt
    as folders (compose's $$ is a literal $)."""
    (script,) = compose["services"]["load-recorded"]["command"]
    return (
        script.replace("${ESPER_RECORDED_DIR:-./recorded}", "<host folder>")
        .replace("$$", "$")
        .replace("/recorded", str(recorded))
        .replace("/prometheus/", f"{data}/")
        .replace("<host folder>", "./recorded")
    )


def test_the_loader_refuses_a_folder_without_blocks(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "recorded").mkdir()
    (tmp_path / "data").mkdir()
    script = _loader_script(compose, tmp_path / "recorded", tmp_path / "data")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "no TSDB blocks under ./recorded" in done.stderr


@pytest.mark.slow
def test_a_running_prometheus_loads_backfilled_blocks_without_a_restart(
    compose: dict[str, Any], stack: Stack, tmp_path: Path
) -> None:
    recorded = tmp_path / "recorded"
    assert cli.main(["telemetry", "backfill", str(stack.run_dir), "--out",
                     str(recorded / "night-1")]) == 0  # fmt: skip
    (tmp_path / "empty").mkdir()
    with serving_blocks(tmp_path / "prom", tmp_path / "empty") as base:
        data = tmp_path / "prom" / "data"
        script = _loader_script(compose, recorded, data)
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        n = len(tsdb.blocks(recorded / "night-1"))
        assert f"copied {n} blocks" in done.stdout
        run_id = stack.run_dir.name

        def loaded() -> bool:
            return bool(query(base, "count(count_over_time(esper_run_info[30d]))"))

        # Prometheus reloads its blocks from disk once a minute (seen here: 58 s).
        wait_until(loaded, 90, f"the blocks of {run_id} loaded without a restart", step=1.0)
