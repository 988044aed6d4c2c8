"""A run tells the truth about how it ended and what it kept: real processes, real signals,
a real full disk, a real terminal."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.leyline import TelemetryEventType
from esper.nissa import read_events
from tests._stack import wait_until

ET = TelemetryEventType
TRAIN = [sys.executable, "-m", "esper.scripts.train"]


def _started(run_root: Path) -> bool:
    files = list(run_root.glob("telemetry_*/events.jsonl"))
    return bool(files) and b"TRAINING_STARTED" in files[0].read_bytes()


def _completed(run_root: Path) -> dict[str, object]:
    (run,) = run_root.glob("telemetry_*")
    events = read_events(run).events
    (done,) = [e for e in events if e.event_type is ET.TRAINING_COMPLETED]
    return done.data


# -- a full disk ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``mount`` (needs root, as in CI; skips where it cannot)."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 200 KB tmpfs."""
    with _tmpfs(tmp_path / "small", "200k") as mount:
        yield mount


@pytest.mark.slow
def test_a_full_disk_is_reported_as_lost_events_and_a_failing_exit_status(
    small_disk: Path,
) -> None:
    proc = subprocess.run(
        [*TRAIN, "ppo", "--n-envs", "2", "--episodes", "8", "--telemetry-level", "debug",
         "--telemetry-dir", str(small_disk)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "TELEMETRY INCOMPLETE" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("dir:"))
    sent = int(re.search(r"sent (\d+)", line).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"lost (\d+)", line).group(1))  # type: ignore[union-attr]
    emitted = int(re.search(r"events emitted: (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    (run,) = small_disk.glob("telemetry_*")
    replay = read_events(run)
    on_disk = len(replay.events)
    assert lost > 0
    assert on_disk + lost == sent, (on_disk, lost, sent)
    # The hub's last word, that the file lost events, comes after the file has closed.
    unrouted = int(re.search(r"with no backend attached: (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert emitted == sent + unrouted
    assert unrouted == 1
    assert not [p for p in replay.problems if not p.torn]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 KB tmpfs: room for a few dozen lines."""
    with _tmpfs(tmp_path / "tiny", "16k") as mount:
        yield mount


@pytest.mark.slow
def test_offline_compare_gives_the_same_verdict_over_lost_events(
    tmp_path: Path, tiny_disk: Path
) -> None:
    """It used to exit 0 with its telemetry lost on a full disk; it shares esper train's
    session now: the same summary, and exit status 3."""
    cli = [sys.executable, "-m", "esper.scripts.cli", "offline"]
    steps = [
        ["record", "--seeds", "1", "--max-epochs", "4", "--out", str(tmp_path / "rec.pt")],
        ["train", "--data", str(tmp_path / "rec.pt"), "--steps", "5",
         "--out", str(tmp_path / "iql.pt")],
    ]  # fmt: skip
    for step in steps:
        made = subprocess.run([*cli, *step], capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr
    proc = subprocess.run(
        [*cli, "compare", "--model", str(tmp_path / "iql.pt"), "--seeds", "101", "102",
         "103", "104", "--max-epochs", "20", "--telemetry-dir", str(tiny_disk)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "TELEMETRY INCOMPLETE: events were lost" in proc.stdout
    assert "Traceback" not in proc.stderr


# -- interrupts of a plain run --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "why"),
    [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "SIGTERM")],
)
def test_an_interrupted_run_records_why_exits_130_or_143_and_prints_no_traceback(
    tmp_path: Path, sig: int, code: int, why: str
) -> None:
    with subprocess.Popen(
        [*TRAIN, "ppo", "--n-envs", "2", "--episodes", "200", "--telemetry-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            wait_until(lambda: _started(tmp_path), 120, "TRAINING_STARTED on disk")
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "interrupted" in err
    assert "telemetry complete" in out
    done = _completed(tmp_path)
    assert done["status"] == "interrupted"
    assert why in str(done["error"])


@pytest.mark.slow
def test_ctrl_c_ends_the_final_scrape_wait_and_keeps_the_runs_own_exit_status(
    tmp_path: Path,
) -> None:
    with subprocess.Popen(
        [*TRAIN, "heuristic", "--max-epochs", "2", "--metrics-port", "0",
         "--metrics-linger", "600", "--telemetry-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:  # the wait starts after training has finished
                lines.append(line)
                if line.startswith("Waiting up to 600 s for every Prometheus"):
                    break
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert time.monotonic() - start < 60
    assert proc.returncode == 0, err
    assert "stopped waiting for the final scrape" in err
    assert "telemetry complete" in out
    assert _completed(tmp_path)["status"] == "completed"


@pytest.mark.slow
def test_a_killed_run_is_reported_unfinished_by_summarize_and_sanctum(tmp_path: Path) -> None:
    from esper.karn.sanctum.app import run_status
    from esper.scripts.sanctum import load

    with subprocess.Popen(
        [*TRAIN, "ppo", "--n-envs", "2", "--episodes", "200", "--telemetry-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as proc:  # fmt: skip
        try:
            wait_until(lambda: _started(tmp_path), 120, "TRAINING_STARTED on disk")
        finally:
            proc.kill()
    summary = subprocess.run(
        [sys.executable, "-m", "esper.scripts.cli", "telemetry", "summarize", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "status: unfinished: no TRAINING_COMPLETED" in summary.stdout
    assert "the run was killed" in summary.stderr
    aggregator, _ = load(tmp_path)
    assert "UNFINISHED" in run_status(aggregator.get_snapshot(), live=False)
    assert run_status(aggregator.get_snapshot(), live=True) == "running"


# -- stopping a live --sanctum run in a real terminal ----------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal, as a person runs it; output is drained."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)  # fmt: skip
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(self.master, 65536):
                self.output += chunk

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        os.close(self.master)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c key", "SIGTERM", "q, then SIGTERM", "q, then SIGINT"])
def test_a_live_sanctum_run_stops_cleanly_and_says_it_was_interrupted(
    tmp_path: Path, how: str
) -> None:
    term = Terminal([*TRAIN, "ppo", "--n-envs", "2", "--episodes", "200", "--sanctum",
                     "--telemetry-dir", str(tmp_path)])  # fmt: skip
    try:
        wait_until(lambda: _started(tmp_path), 120, "TRAINING_STARTED on disk")
        if how.startswith("q"):
            term.type(b"q")
            wait_until(lambda: b"training continues" in term.output, 60, "the UI to close")
        if how == "ctrl-c key":
            term.type(b"\x03")  # the UI owns the terminal: Ctrl-C arrives as a key
        elif how.endswith("SIGTERM"):
            term.proc.send_signal(signal.SIGTERM)
        else:
            term.proc.send_signal(signal.SIGINT)
        code = term.proc.wait(120)
    finally:
        term.close()
    expected = 143 if "SIGTERM" in how else 130
    text = term.output.decode(errors="replace")
    assert code == expected, text[-2000:]
    assert "terminate called" not in text
    assert "Traceback" not in text
    done = _completed(tmp_path)
    assert done["status"] == "interrupted"


# -- bad input: clear errors before any work, nothing half-written --------------------------------


@pytest.mark.slow
def test_an_unwritable_save_path_fails_before_training_naming_the_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    start = time.monotonic()
    proc = subprocess.run([*TRAIN, "ppo", "--save", str(blocker / "policy.pt"),
                           "--telemetry-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert f"--save {blocker / 'policy.pt'}: cannot write in {blocker}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "telemetry was set up before the check"
    assert time.monotonic() - start < 60


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["record", "--seeds", "1", "--out", "{blocker}/d.pt"], "--out {blocker}/d.pt"),
        (["train", "--data", "{bogus}", "--out", "{tmp}/m.pt"], "{bogus}: not an esper offline"),
        (["compare", "--model", "{bogus}", "--seeds", "1"], "{bogus}: not an IQL checkpoint"),
    ],
)
def test_offline_commands_name_the_bad_path_without_a_traceback(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    from esper.scripts import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bogus = tmp_path / "not-a-recording.pt"
    bogus.write_text("hello")
    paths = {"blocker": blocker, "bogus": bogus, "tmp": tmp_path}
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.cli", "offline", *[a.format(**paths) for a in argv]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cli is not None
    assert proc.returncode in (1, 2)
    assert message.format(**paths) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_train_on_a_recording_with_no_decisions_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from esper.scripts import cli

    empty = tmp_path / "empty.pt"
    nothing = torch.zeros(0)
    torch.save({"format": "esper-offline-v1", "obs": nothing, "actions": nothing.long(),
                "rewards": nothing, "next_obs": nothing, "dones": nothing}, empty)  # fmt: skip
    assert cli.main(["offline", "train", "--data", str(empty), "--out", str(tmp_path / "m")]) == 1
    assert f"{empty}: the dataset holds no decisions" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["docs", "dashboards"])
def test_an_unwritable_output_of_the_generators_names_the_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from esper.scripts import cli

    assert cli.main([command, "--out", "/proc/esper"]) == 2
    assert f"esper {command}: error: --out /proc/esper: cannot write in" in capsys.readouterr().err


@pytest.mark.slow
def test_a_corrupt_cifar_archive_is_named_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    proc = subprocess.run([*TRAIN, "heuristic", "--task", "cifar10", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "cifar-10-python.tar.gz is not a readable .tar.gz archive" in proc.stderr
    assert "Traceback" not in proc.stderr


def _recorded(tmp_path: Path) -> Path:
    from esper.leyline import example_payload, make_event
    from esper.nissa import FileOutput

    path = tmp_path / "in.jsonl"
    out = FileOutput(path)
    for i in range(3):
        out.emit(make_event(ET.CHECKPOINT_LOADED, example_payload(ET.CHECKPOINT_LOADED),
                            epoch=i))  # fmt: skip
    out.close()
    return path


def test_replay_to_an_unwritable_dir_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    from esper.scripts import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = cli.main(["telemetry", "replay", str(_recorded(tmp_path)), "--telemetry-dir",
                     str(blocker / "runs")])  # fmt: skip
    assert code == 2


def test_a_failed_strict_replay_leaves_no_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esper.scripts import cli

    path = _recorded(tmp_path)
    with path.open("a") as fh:
        fh.write("{not json\n")
        fh.write(path.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["telemetry", "replay", str(path), "--strict", "--telemetry-file",
                     str(out)]) == 1  # fmt: skip
    assert f"{path}:4:" in capsys.readouterr().err
    assert not out.exists()


def test_strict_reading_rejects_a_bare_nan_token_and_lenient_reading_keeps_it(
    tmp_path: Path,
) -> None:
    from esper.leyline import CorruptLineError, example_payload, make_event
    from esper.nissa import FileOutput

    path = tmp_path / "in.jsonl"
    out = FileOutput(path)
    for i in range(3):
        data = example_payload(ET.GOVERNOR_ROLLBACK, loss_at_panic=1.25)
        out.emit(make_event(ET.GOVERNOR_ROLLBACK, data, epoch=i))
    out.close()
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"loss_at_panic":1.25', '"loss_at_panic":NaN')
    assert "NaN" in lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptLineError, match=r":2: non-standard JSON token NaN"):
        read_events(path, strict=True)
    lenient = read_events(path)
    assert len(lenient.events) == 3
    assert math.isnan(lenient.events[1].data["loss_at_panic"])


def test_a_nan_where_an_integer_belongs_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    path = _recorded(tmp_path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"episodes_completed":1', '"episodes_completed":NaN')
    path.write_text("\n".join(lines) + "\n")
    lenient = read_events(path)
    assert len(lenient.events) == 2
    (problem,) = lenient.problems
    assert str(problem).startswith(f"{path}:2: corrupt line: CHECKPOINT_LOADED: field ")
    assert "'episodes_completed' expects int" in str(problem)


@pytest.mark.slow
def test_a_save_path_that_is_not_utf8_loses_no_event(tmp_path: Path) -> None:
    """``--save ck<0xff>.pt``: every event emitted is on disk, and the summary says so (it used
    to say 'delivered 36, telemetry complete' with 32 lines on disk, and exit 0)."""
    save = os.fsdecode(os.fsencode(str(tmp_path)) + b"/ck\xff.pt")
    proc = subprocess.run(
        [*TRAIN, "ppo", "--n-envs", "2", "--episodes", "2", "--max-epochs", "2",
         "--save", save, "--telemetry-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, errors="surrogateescape", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    emitted = int(re.search(r"events emitted: (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    (run,) = (tmp_path / "runs").iterdir()
    events = read_events(run, strict=True).events
    assert len(events) == emitted
    (saved,) = [e for e in events if e.event_type is ET.CHECKPOINT_SAVED]
    assert os.fsencode(saved.data["path"]).endswith(b"/ck\xff.pt")
    assert os.path.exists(os.fsencode(saved.data["path"]))
