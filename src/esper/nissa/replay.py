"""Read a JSONL telemetry file or run directory back into events.

A torn last line (a process killed mid-write) is tolerated and reported; any other line that
is not a valid event is named by file and line: ``strict=True`` raises CorruptLineError,
otherwise it is skipped, reported in ``Replay.problems``, and every other event is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline import CorruptLineError, ReplayError, TelemetryEvent
from esper.nissa._file import EVENTS_FILE, RUN_DIR_PREFIX
from esper.nissa._jsonl import decode_line


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that could not be read back."""

    path: Path
    line: int
    reason: str
    torn: bool
    """True for an unterminated last line (the writer was killed mid-line)."""

    def __str__(self) -> str:
        kind = "torn last line" if self.torn else "corrupt line"
        return f"{self.path}:{self.line}: {kind}: {self.reason}"


@dataclass(slots=True)
class Replay:
    """The events read back from one file, in file order, and what could not be read."""

    path: Path
    events: list[TelemetryEvent] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)

    @property
    def torn_tail(self) -> LineProblem | None:
        """The torn last line, if there was one."""
        return next((p for p in self.problems if p.torn), None)


def resolve_events_file(path: str | os.PathLike[str]) -> Path:
    """The JSONL file behind ``path``: the file itself, ``path/events.jsonl``, or the
    ``events.jsonl`` of the only run directory under ``path``."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise ReplayError(f"{p}: no such file or directory")
    if (p / EVENTS_FILE).is_file():
        return p / EVENTS_FILE
    runs = sorted(d for d in p.glob(f"{RUN_DIR_PREFIX}*") if (d / EVENTS_FILE).is_file())
    if len(runs) == 1:
        return runs[0] / EVENTS_FILE
    if not runs:
        raise ReplayError(f"{p}: no {EVENTS_FILE} here or in a {RUN_DIR_PREFIX}* directory")
    names = ", ".join(r.name for r in runs)
    raise ReplayError(f"{p}: holds {len(runs)} run directories; name one of: {names}")


def iter_events(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    problems: list[LineProblem] | None = None,
) -> Iterator[tuple[TelemetryEvent, int]]:
    """Yield (event, seq) for every readable line of the file behind ``path``, lazily.

    Unreadable lines are appended to ``problems`` (when given); with ``strict`` a corrupt
    line that is not the torn last line raises CorruptLineError naming file and line.
    """
    file = resolve_events_file(path)
    with file.open("rb") as fh:
        lineno = 0
        for raw in fh:
            lineno += 1
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                yield decode_line(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problem = LineProblem(file, lineno, str(exc), torn)
                if strict and not torn:
                    raise CorruptLineError(str(file), lineno, problem.reason) from None
                if problems is not None:
                    problems.append(problem)


def read_events(path: str | os.PathLike[str], *, strict: bool = False) -> Replay:
    """Read every event of a JSONL file or run directory (see :func:`iter_events`)."""
    replay = Replay(resolve_events_file(path))
    for event, seq in iter_events(replay.path, strict=strict, problems=replay.problems):
        replay.events.append(event)
        replay.seqs.append(seq)
    return replay
