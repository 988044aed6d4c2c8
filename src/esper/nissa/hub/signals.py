"""The signals that stop a run, in one place: which they are, a context in which this thread
blocks them (so the threads it starts are born blocking them), daemon-thread start-up, and the
handler that makes each stop the run the way Ctrl-C does.

Python runs signal handlers only in the main thread, but the kernel may deliver a signal to any
thread that does not block it: if a helper thread takes Ctrl-C, a main thread blocked in a
system call never wakes up to handle it. So every thread Esper starts (the hub's pump and lanes,
the OTel SDK's worker, the ``/metrics`` server's threads) is started inside ``signals_blocked``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""What a user, a terminal, a scheduler or torchrun sends to stop a job (not SIGKILL, which no
process can see: a run killed so reads back as ``unfinished``)."""


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread for the block, then restore its mask: a thread
    started inside is born blocking them (it inherits the mask)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_daemon_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a named daemon thread that never takes a stop signal.

    The mask is set in this thread around ``start`` so the new thread is born with it: a
    thread that blocked the signals only as its own first step could still take one that
    arrives before it runs, and then a main thread blocked in a system call never wakes.
    """
    with signals_blocked():
        thread = threading.Thread(target=target, name=name[:60], daemon=True)
        thread.start()
    return thread


class _StopSignals:
    """The handler of the signals that stop a run: the first one unwinds the main thread (Ctrl-C
    as KeyboardInterrupt, any other as ``SystemExit(128 + signum)``); those that follow while
    it unwinds are noted and ignored, so the unwinding that records how the run ended (its
    TRAINING_COMPLETED, the final flush) is never cut short by a second Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.ignored = 0

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        if self.first is not None:
            self.ignored += 1
            return
        self.first = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Make every stop signal unwind the main thread the way Ctrl-C does, once (see
    ``_StopSignals``), so ``finally`` blocks and the atexit hook close the hub and deliver what
    is queued. Call from the main thread of a command-line program; libraries should not take
    over signals."""
    handler = _StopSignals()
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    # A process started while its parent's thread blocked these signals inherits the block:
    # the thread that handles them must receive them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
