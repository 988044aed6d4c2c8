"""Training progress on stderr: rich's progress bar on a terminal; one line per 10% elsewhere
(a CI log or a pipe), where a redrawn bar would only be noise."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBar:
    """``bar(done, total, status)`` as training advances; ``close()`` when it stops."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_decile = -1

    def __call__(self, done: int, total: int, status: str) -> None:
        if not self.console.is_terminal:
            decile = int(10 * done / max(total, 1))
            if decile > self._last_decile:
                self._last_decile = decile
                self.console.print(f"{self.label} {done}/{total}  {status}", soft_wrap=True)
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total, status=status)
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total, status=status)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Stop redrawing (also when the run stops early), leaving the last state shown."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
