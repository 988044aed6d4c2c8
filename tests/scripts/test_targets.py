"""``esper targets``: the scrape targets of dead trainers are found and removed, live ones kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.targets import OWNER_START
from esper.scripts import cli
from tests._stack import free_port, wait_until


@pytest.mark.slow
def test_a_killed_trainers_target_is_listed_dead_and_pruned_and_a_live_one_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = tmp_path / "targets"
    live = PrometheusOutput(cuda=False)
    live.serve(0)
    live_file = live.write_sd_file(sd, host="127.0.0.1", labels={"run_id": "live-run"})
    with subprocess.Popen(
        [sys.executable, "-m", "esper.scripts.train", "ppo", "--n-envs", "2", "--episodes", "200",
         "--metrics-port", "0", "--metrics-sd-dir", str(sd)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as proc:  # fmt: skip
        try:
            wait_until(lambda: len(list(sd.glob("*.json"))) == 2, 120, "the trainer's target")
        finally:
            proc.kill()
    (dead_file,) = [p for p in sd.glob("*.json") if p != live_file]
    # A target whose pid now belongs to another process (ours) is dead too.
    reused = sd / "esper-reused.json"
    group = json.loads(live_file.read_text())
    group[0]["labels"][OWNER_START] = "1"
    reused.write_text(json.dumps(group))

    assert cli.main(["targets", "list", str(sd)]) == 0
    listing = capsys.readouterr().out
    assert f"{dead_file.name} " in listing
    lines = {ln.split()[0]: ln for ln in listing.splitlines()}
    assert lines[dead_file.name].endswith(" dead")
    assert lines[reused.name].endswith(" dead")
    assert lines[live_file.name].endswith(" alive")
    assert f"pid {os.getpid()}" in lines[live_file.name]

    assert cli.main(["targets", "prune", str(sd), "--dry-run"]) == 0
    assert dead_file.exists()
    assert cli.main(["targets", "prune", str(sd)]) == 0
    assert "2 stale target(s) removed" in capsys.readouterr().out
    assert sorted(p.name for p in sd.glob("*.json")) == [live_file.name]
    live.close()
    assert not live_file.exists()


def test_another_hosts_silent_target_is_kept_unless_asked(tmp_path: Path) -> None:
    from esper.nissa.prometheus.targets import OWNER_HOST, OWNER_PID

    remote = tmp_path / "esper-remote.json"
    labels = {"run_id": "r", OWNER_HOST: "another-host", OWNER_PID: "1234"}
    remote.write_text(json.dumps([{"targets": [f"127.0.0.1:{free_port()}"], "labels": labels}]))
    assert cli.main(["targets", "prune", str(tmp_path)]) == 0
    assert remote.exists()
    assert cli.main(["targets", "prune", str(tmp_path), "--unreachable"]) == 0
    assert not remote.exists()


def test_targets_names_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["targets", "list", str(tmp_path / "nope")]) == 2
    assert "nope: not a directory" in capsys.readouterr().err
