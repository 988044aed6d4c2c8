"""The edges of a run, tried as an operator would: a signal in start-up, a checkpoint of the
right format with the wrong contents, a replay into its own input, a symlink loop."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import DirectoryOutput, FileOutput, read_events
from esper.scripts import cli
from tests._stack import wait_until

ET = TelemetryEventType
TRAIN = [sys.executable, "-m", "esper.scripts.train"]


@pytest.mark.slow
def test_sigterm_in_start_up_says_what_the_record_holds(tmp_path: Path) -> None:
    """The bug: SIGTERM while a 64-env run built its envs printed 'the run is recorded as
    interrupted' over a run directory with no event. What the run says must be what its
    record holds, whenever the signal lands."""
    with subprocess.Popen(
        [*TRAIN, "ppo", "--n-envs", "64", "--episodes", "1", "--telemetry-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # the session is open: the envs are being built
                if line.startswith("Telemetry will be saved to"):
                    break
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    events = read_events(next(tmp_path.iterdir())).events
    started = [e for e in events if e.event_type is ET.TRAINING_STARTED]
    if started:  # the signal came after all: the record must say how the run ended
        (done,) = [e for e in events if e.event_type is ET.TRAINING_COMPLETED]
        assert done.data["status"] == "interrupted"
        assert "the run is recorded as interrupted" in err
    else:
        assert "stopped before training started, so the record holds no run" in err
        assert "recorded as" not in err
        assert not any(e.event_type is ET.TRAINING_COMPLETED for e in events)


def _training(tmp_path: Path) -> subprocess.Popen[str]:
    """A PPO run far longer than any test, once its first epoch is on disk."""
    proc = subprocess.Popen(
        [*TRAIN, "ppo", "--n-envs", "2", "--episodes", "200", "--telemetry-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def trained() -> bool:
        files = list(tmp_path.glob("telemetry_*/events.jsonl"))
        return bool(files) and b'"EPOCH_COMPLETED"' in files[0].read_bytes()

    wait_until(lambda: trained() or proc.poll() is not None, 120, "the first epoch on disk")
    return proc


def _completed(tmp_path: Path) -> dict[str, object]:
    events = read_events(next(tmp_path.iterdir())).events
    (done,) = [e for e in events if e.event_type is ET.TRAINING_COMPLETED]
    return done.data


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [(signal.SIGHUP, 129, "SIGHUP"), (signal.SIGQUIT, 131, "SIGQUIT")],
    ids=["hangup", "quit"],
)
def test_a_hangup_or_quit_is_recorded_like_sigterm(
    tmp_path: Path, sig: int, code: int, name: str
) -> None:
    """A closed terminal (SIGHUP) or a quit key (SIGQUIT) used to end the process with no
    TRAINING_COMPLETED and nothing flushed: the record looked like a kill -9."""
    proc = _training(tmp_path)
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert f"interrupted ({name} (exit status {code})); the run is recorded as interrupted" in err
    assert "telemetry complete" in out
    done = _completed(tmp_path)
    assert done["status"] == "interrupted"
    assert name in str(done["error"])


@pytest.mark.slow
@pytest.mark.parametrize("when", ["at-once", "while-closing"])
def test_a_second_sigterm_never_cuts_the_record_short(tmp_path: Path, when: str) -> None:
    """The first SIGTERM unwinds the run; one that follows, at once or while the telemetry
    closes, is ignored: no traceback (one used to come from the atexit hook), and the record
    still says the run was interrupted."""
    proc = _training(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        if when == "while-closing":
            assert proc.stderr is not None
            for line in proc.stderr:  # progress lines, then the stop message
                if "interrupted (" in line:
                    break  # said once the record holds the end: now the telemetry closes
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert "telemetry complete" in out
    assert _completed(tmp_path)["status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda ck: ck.pop("policy"), "has no 'policy'"),
        (lambda ck: ck["policy"].pop(next(iter(ck["policy"]))), "does not fit this policy"),
    ],
    ids=["no-policy", "missing-keys"],
)
def test_a_checkpoint_of_the_right_format_with_the_wrong_contents_is_a_usage_error(
    tmp_path: Path, spoil: object, named: str
) -> None:
    ckpt = tmp_path / "ck.pt"
    made = subprocess.run([*TRAIN, "ppo", "--n-envs", "2", "--episodes", "1", "--max-epochs",
                           "2", "--save", str(ckpt)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    contents = torch.load(ckpt, weights_only=True)
    spoil(contents)  # type: ignore[operator]
    torch.save(contents, ckpt)
    proc = subprocess.run([*TRAIN, "ppo", "--n-envs", "2", "--episodes", "1", "--max-epochs",
                           "2", "--resume", str(ckpt), "--telemetry-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"--resume {ckpt}: " in proc.stderr
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr


def _record(path: Path, n: int) -> None:
    out = FileOutput(path)
    for i in range(n):
        data = {"reason": "events_dropped", "detail": f"#{i}"}
        out.emit(TelemetryEvent(ET.TELEMETRY_WARNING, epoch=i, data=data))
    out.close()


def test_replaying_a_file_into_itself_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: ``replay x.jsonl --telemetry-file x.jsonl`` read its own output back and grew
    9,700 lines to 750,845, with exit 0."""
    path = tmp_path / "x.jsonl"
    _record(path, 20)
    before = path.read_bytes()
    assert cli.main(["telemetry", "replay", str(path), "--telemetry-file", str(path)]) == 2
    assert "is the record" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_replaying_a_run_into_its_own_parent_directory_adds_one_run(tmp_path: Path) -> None:
    """The bug: ``replay rr --telemetry-dir rr`` found its own new, empty run directory among
    its inputs, failed, and left that directory behind to break ``summarize rr``."""
    out = DirectoryOutput(tmp_path / "rr")
    for i in range(5):
        out.emit(TelemetryEvent(ET.TELEMETRY_WARNING, epoch=i,
                                data={"reason": "events_dropped", "detail": "x"}))  # fmt: skip
    out.close()
    rr = str(tmp_path / "rr")
    assert cli.main(["telemetry", "replay", rr, "--telemetry-dir", rr]) == 0
    runs = sorted((tmp_path / "rr").iterdir())
    assert len(runs) == 2
    assert [len(read_events(r).events) for r in runs] == [5, 5]


def test_a_symlink_loop_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert cli.main(["telemetry", "summarize", str(loop)]) == 1
    assert f"{loop}: too many levels of symbolic links" in capsys.readouterr().err
