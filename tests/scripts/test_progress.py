"""The training progress bar: rich's bar on a terminal, a line per 10% in a log."""

from __future__ import annotations

import io

from esper.scripts._progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_tenth() -> None:
    out = io.StringIO()
    bar = ProgressBar("training", stream=out)
    for done in range(101):
        bar(done, 100, f"status {done}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [f"training {d}/100  status {d}" for d in range(0, 101, 10)]


def test_a_terminal_gets_a_redrawn_bar_that_ends_complete() -> None:
    out = _Terminal()
    bar = ProgressBar("training", stream=out)
    for done in range(1, 5):
        bar(done, 4, f"batch {done}")
    text = out.getvalue()
    assert "\x1b[" in text  # redrawn in place with terminal control codes
    assert "4/4" in text
    assert "batch 4" in text
    bar.close()  # closing twice (after completion) is harmless


def test_a_run_stopped_early_leaves_the_terminal_clean() -> None:
    out = _Terminal()
    bar = ProgressBar("training", stream=out)
    bar(1, 10, "batch 1")
    bar.close()
    assert "\x1b[?25h" in out.getvalue()  # the hidden cursor is shown again
