"""What survives the end of a process: exit without close, SIGTERM, SIGINT and kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from esper.nissa import read_events

PROGRAM = textwrap.dedent(
    """
    import sys
    import time
    from esper.leyline import TelemetryEvent, TelemetryEventType
    from esper.nissa import FileOutput, get_hub, install_signal_handlers

    install_signal_handlers()
    hub = get_hub()
    hub.add_backend(FileOutput(sys.argv[1], buffer_size=1000))
    for i in range(int(sys.argv[2])):
        hub.emit(TelemetryEvent(event_type=TelemetryEventType.EPOCH_COMPLETED, epoch=i))
    if sys.argv[3] == "flush":
        hub.flush()
    print("ready", flush=True)
    if sys.argv[3] != "exit":
        # Wait for the test's signal the way a training loop does, coming back to Python
        # often. (A process blocked in one read() can miss a signal that lands just before
        # the call: CPython has run the handler's C half and the read never returns.)
        while True:
            time.sleep(0.01)
    """
)


@contextmanager
def _started(path: Path, n: int, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Run PROGRAM until it has emitted ``n`` events and said so."""
    with subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(path), str(n), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        try:
            yield proc
        finally:
            proc.kill()


def test_events_are_delivered_at_interpreter_exit_without_close(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with _started(path, 5000, "exit") as proc:
        assert proc.wait(timeout=60) == 0
    assert [e.epoch for e in read_events(path, strict=True).events] == list(range(5000))


# Python re-raises an unhandled Ctrl-C as death by SIGINT after running its exit hooks.
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_events_queued_at_a_signal_are_delivered(tmp_path: Path, sig: int, code: int) -> None:
    path = tmp_path / "e.jsonl"
    with _started(path, 5000, "wait") as proc:
        proc.send_signal(sig)
        returncode = proc.wait(timeout=60)
        assert proc.stderr is not None
        assert returncode == code, proc.stderr.read()
    assert [e.epoch for e in read_events(path, strict=True).events] == list(range(5000))


def test_after_kill_9_everything_up_to_the_last_flush_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with _started(path, 3000, "flush") as proc:
        proc.kill()
        proc.wait(timeout=60)
    assert [e.epoch for e in read_events(path, strict=True).events] == list(range(3000))
