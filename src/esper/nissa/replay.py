"""Read a JSONL telemetry file or run directory back into events.

A torn last line (a process killed mid-write) is tolerated and reported; any other line that
is not a valid event is named by file and line: ``strict=True`` raises CorruptLineError,
otherwise it is skipped, reported in ``Replay.problems``, and every other event is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from esper.leyline import CorruptLineError, ReplayError, TelemetryEvent, TelemetryEventType
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
    """The events read back from a file or run directory, and what could not be read.

    A run directory's files (``events.jsonl`` and the files of forked children,
    ``events.<pid>.jsonl``) are merged in timestamp order; ``seqs[i]`` is ``events[i]``'s
    seq within its own file.
    """

    path: Path
    events: list[TelemetryEvent] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    file_counts: dict[Path, int] = field(default_factory=dict)
    """Events read from each file."""

    @property
    def torn_tail(self) -> LineProblem | None:
        """The torn last line, if there was one."""
        return next((p for p in self.problems if p.torn), None)

    @property
    def status(self) -> RunStatus:
        """How the recorded run ended, as far as its events say."""
        return run_status(self.events)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """How a recorded run ended: ``completed``, ``interrupted`` or ``failed`` (from
    TRAINING_COMPLETED), ``unfinished`` (started, never completed: the process was killed,
    or is still running), or ``unknown`` (no TRAINING_STARTED either)."""

    state: str
    detail: str

    @property
    def finished(self) -> bool:
        return self.state in {"completed", "interrupted", "failed"}

    def __str__(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


def run_status(events: Iterable[TelemetryEvent]) -> RunStatus:
    """The RunStatus of a run's events (see RunStatus)."""
    started = completed = None
    last_ns = 0
    for e in events:
        last_ns = max(last_ns, e.timestamp_ns)
        if e.event_type is TelemetryEventType.TRAINING_STARTED:
            started = e
        elif e.event_type is TelemetryEventType.TRAINING_COMPLETED:
            completed = e
    if completed is not None:
        state = str(completed.data.get("status", "completed"))
        error = completed.data.get("error")
        return RunStatus(state, f"{error}" if error else completed.message)
    if started is None:
        return RunStatus("unknown", "no TRAINING_STARTED or TRAINING_COMPLETED event")
    last = datetime.fromtimestamp(last_ns / 1e9, UTC).isoformat(timespec="seconds")
    return RunStatus(
        "unfinished",
        f"no TRAINING_COMPLETED: the run was killed or is still running, or its record was "
        f"cut short (a full disk; see the run's summary) (last event {last})",
    )


def resolve_events_files(path: str | os.PathLike[str]) -> list[Path]:
    """The JSONL files behind ``path``: the file itself; a run directory's ``events.jsonl``
    and its forked children's ``events.<pid>.jsonl``; or those of the only run directory
    under ``path``."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise ReplayError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise ReplayError(f"{p}: not a file or directory")
    if (p / EVENTS_FILE).is_file():
        return _run_files(p)
    runs = sorted(d for d in p.glob(f"{RUN_DIR_PREFIX}*") if (d / EVENTS_FILE).is_file())
    if len(runs) == 1:
        return _run_files(runs[0])
    if not runs:
        raise ReplayError(f"{p}: no {EVENTS_FILE} here or in a {RUN_DIR_PREFIX}* directory")
    names = ", ".join(r.name for r in runs)
    raise ReplayError(f"{p}: holds {len(runs)} run directories; name one of: {names}")


def _run_files(run_dir: Path) -> list[Path]:
    stem, suffix = Path(EVENTS_FILE).stem, Path(EVENTS_FILE).suffix
    children = sorted(run_dir.glob(f"{stem}.*{suffix}"))
    return [run_dir / EVENTS_FILE, *children]


def iter_events(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    problems: list[LineProblem] | None = None,
) -> Iterator[tuple[TelemetryEvent, int]]:
    """Yield (event, seq) for every readable line of the files behind ``path``, lazily,
    file by file.

    Unreadable lines are appended to ``problems`` (when given); with ``strict`` a corrupt
    line that is not the torn last line, or a non-standard JSON token, raises
    CorruptLineError naming file and line.
    """
    for file in resolve_events_files(path):
        yield from _iter_file(file, strict=strict, problems=problems)


def _iter_file(
    file: Path, *, strict: bool, problems: list[LineProblem] | None
) -> Iterator[tuple[TelemetryEvent, int]]:
    try:
        fh = file.open("rb")
    except OSError as exc:
        raise ReplayError(f"{file}: cannot read: {exc.strerror or exc}") from None
    with fh:
        lineno = 0
        for raw in fh:
            lineno += 1
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                yield decode_line(raw.decode("utf-8"), strict=strict)
            except (UnicodeDecodeError, ValueError) as exc:
                problem = LineProblem(file, lineno, str(exc), torn)
                if strict and not torn:
                    raise CorruptLineError(str(file), lineno, problem.reason) from None
                if problems is not None:
                    problems.append(problem)


def read_events(path: str | os.PathLike[str], *, strict: bool = False) -> Replay:
    """Read every event of a JSONL file or run directory (see :func:`iter_events`)."""
    files = resolve_events_files(path)
    replay = Replay(files[0], files=files)
    pairs: list[tuple[TelemetryEvent, int]] = []
    for file in files:
        before = len(pairs)
        pairs.extend(_iter_file(file, strict=strict, problems=replay.problems))
        replay.file_counts[file] = len(pairs) - before
    if len(files) > 1:
        pairs.sort(key=lambda pair: pair[0].timestamp_ns)  # stable: file order within a tie
    replay.events = [event for event, _ in pairs]
    replay.seqs = [seq for _, seq in pairs]
    return replay
