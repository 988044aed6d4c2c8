"""Bad input a hostile or unlucky user gives: a clear error that names it, and nothing the user
recorded destroyed. (Each case here broke before its fix.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest

from esper.nissa.prometheus.targets import OWNER_HOST, OWNER_PID
from esper.scripts import cli, telemetry
from tests._stack import free_port

RUN = Path(__file__).resolve().parents[1] / "data" / "sanctum_run"


@pytest.fixture
def record(tmp_path: Path) -> Path:
    dst = tmp_path / "self"
    shutil.copytree(RUN, dst)
    return dst


def _outputs_over_the_record(record: Path, tmp_path: Path) -> list[Path]:
    """The record's events file named every way that reaches it."""
    events = record / "events.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(events)
    hard = tmp_path / "hard.jsonl"
    hard.hardlink_to(events)
    dotted = record / ".." / record.name / "events.jsonl"
    return [events, link, hard, dotted, Path(os.path.relpath(events))]


def test_backfill_never_writes_its_openmetrics_over_the_record_it_reads(
    record: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("yaml")
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    events = record / "events.jsonl"
    before = events.read_bytes()
    for i, out in enumerate(_outputs_over_the_record(record, tmp_path)):
        code = telemetry.main(["backfill", "--out", str(tmp_path / f"o{i}"), "--openmetrics",
                               str(out), str(record)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--openmetrics {out}: is the record" in err
        assert "Traceback" not in err
    assert events.read_bytes() == before
    assert not any((tmp_path / f"o{i}").exists() for i in range(5)), "no work started"


def test_backfill_never_writes_blocks_into_the_run_directory_it_reads(
    record: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    before = sorted(p.name for p in record.iterdir())
    assert telemetry.main(["backfill", "--out", str(record), str(record)]) == 2
    assert f"--out {record}: holds the record" in capsys.readouterr().err
    assert sorted(p.name for p in record.iterdir()) == before


def test_replay_never_appends_the_record_to_itself(
    record: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = record / "events.jsonl"
    before = events.read_bytes()
    for out in _outputs_over_the_record(record, tmp_path):
        assert telemetry.main(["replay", str(record), "--telemetry-file", str(out)]) == 2
        assert "is the record" in capsys.readouterr().err
    assert events.read_bytes() == before


def _target(path: Path, pid: str) -> None:
    labels = {"run_id": path.stem, OWNER_HOST: socket.gethostname(), OWNER_PID: pid}
    path.write_text(json.dumps([{"targets": [f"127.0.0.1:{free_port()}"], "labels": labels}]))


@pytest.mark.parametrize("bad_pid", ["²", "9" * 5000, "0", "-5", "4194305"])
def test_one_bad_target_file_is_named_and_skipped_and_the_others_listed(
    tmp_path: Path, bad_pid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _target(tmp_path / "esper-bad.json", bad_pid)
    _target(tmp_path / "esper-mine.json", str(os.getpid()))  # this process: alive
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _target(tmp_path / "esper-dead.json", str(dead))
    assert cli.main(["targets", "list", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "esper-bad.json: skipped" in err
    assert "Traceback" not in err
    assert "esper-mine.json" in out
    assert "esper-dead.json" in out
    assert cli.main(["targets", "prune", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esper-bad.json", "esper-mine.json"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e30", "-1", "0", "2999-01-01T00:00:00Z"])
def test_align_start_takes_only_a_real_instant(
    record: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        telemetry.main(["backfill", "--out", str(tmp_path / "o"), f"--align-start={value}",
                        str(record)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --align-start: must be a real instant from 2000-01-01" in err
    assert not (tmp_path / "o").exists()
    assert math.isfinite(946_684_800.0)


@pytest.mark.parametrize("seed", ["99999999999999999999", str(2**32), "-1"])
def test_an_out_of_range_seed_is_a_usage_error_before_any_work(
    tmp_path: Path, seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "ppo", f"--seed={seed}", "--telemetry-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert "argument --seed: must be in 0..4294967295" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "no run directory left behind"


@pytest.mark.parametrize("kind", ["random bytes", "a pickled function"])
def test_an_unloadable_checkpoint_is_named_without_unsafe_advice(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    ckpt = tmp_path / "ckpt.pt"
    if kind == "random bytes":
        ckpt.write_bytes(os.urandom(3000))
    else:
        torch.save({"f": print}, ckpt)
    code = cli.main(["train", "ppo", "--resume", str(ckpt), "--telemetry-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--resume {ckpt}: not a loadable checkpoint" in err
    for advice in ("weights_only=False", "weights_only` set to `False", "will likely succeed",
                   "add_safe_globals", "safe_globals", "trust"):  # fmt: skip
        assert advice not in err, f"the message passes on torch's advice: {advice}"
    assert not (tmp_path / "r").exists(), "checked before any work: no empty run directory"


@pytest.mark.slow
def test_a_resume_into_another_env_count_says_what_differs(tmp_path: Path) -> None:
    import subprocess
    import sys

    from esper.nissa import read_events

    def train(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "esper.scripts.cli", "train", "ppo", "--episodes", "2",
             "--max-epochs", "3", "--no-report", *flags],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    saved = train("--n-envs", "1", "--save", str(tmp_path / "ck.pt"))
    assert saved.returncode == 0, saved.stderr
    resumed = train("--n-envs", "2", "--resume", str(tmp_path / "ck.pt"),
                    "--telemetry-dir", str(tmp_path / "runs"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "this run differs from the one that saved it (n_envs 1 -> 2)" in resumed.stderr
    (loaded,) = [e for e in read_events(next((tmp_path / "runs").iterdir())).events
                 if e.event_type.name == "CHECKPOINT_LOADED"]  # fmt: skip
    assert loaded.data["differs"] == ["n_envs 1 -> 2"]
    assert loaded.severity.value == "warning"
    same = train("--n-envs", "1", "--resume", str(tmp_path / "ck.pt"))
    assert same.returncode == 0, same.stderr
    assert "differs" not in same.stderr


ANNOUNCE = """
import os, sys

class _Announce:
    # Says on stderr when the module ESPER_TEST_ANNOUNCE names starts to import.
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("ESPER_TEST_ANNOUNCE"):
            sys.meta_path.remove(self)
            sys.stderr.write("ANNOUNCE importing " + name + "\\n")
            sys.stderr.flush()
        return None

sys.meta_path.insert(0, _Announce())
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "module"),
    [
        (["train", "ppo", "--episodes", "1", "--no-report"], "torch"),
        (["telemetry", "backfill", str(RUN), "--out", "OUT"], "esper.nissa.prometheus.backfill"),
        (["report", str(RUN), "-o", "OUT"], "esper.karn.report"),
    ],
)
def test_ctrl_c_while_a_command_starts_exits_130_without_a_traceback(
    tmp_path: Path, command: list[str], module: str
) -> None:
    """The interrupt lands while ``module`` imports (announced by an import hook, so the
    test waits for that moment rather than guessing it)."""
    import signal
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ANNOUNCE)
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "ESPER_TEST_ANNOUNCE": module, "PYTHONPATH": path}
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    with subprocess.Popen([sys.executable, "-m", "esper.scripts.cli", *argv], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path) as proc:  # fmt: skip
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first == f"ANNOUNCE importing {module}\n", first
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert f"esper {argv[0]}: interrupted" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "ppo", "--resume", "CKPT", "--save", "CKPT"],
            "--save CKPT: is the checkpoint --resume CKPT being read",
        ),
        (
            ["train", "ppo", "--save", "OUT", "--telemetry-file", "OUT"],
            "--save OUT: is the --telemetry-file too",
        ),
        (
            ["offline", "train", "--data", "CKPT", "--out", "CKPT"],
            "--out CKPT: is the dataset --data CKPT being read",
        ),
    ],
)
def test_a_command_never_saves_over_what_it_reads_or_records(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    ckpt, out = tmp_path / "ck.pt", tmp_path / "out.jsonl"
    torch.save({"x": torch.zeros(1)}, ckpt)
    before = ckpt.read_bytes()

    def fill(a: str) -> str:
        return a.replace("CKPT", str(ckpt)).replace("OUT", str(out))

    code = cli.main([fill(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err[-500:]
    assert fill(message) in err
    assert ckpt.read_bytes() == before
    assert not out.exists()
