"""Read a JSONL telemetry file or run directory back into events.

A multi-rank run writes one file per rank (``events.rank<R>.jsonl``) in one run directory per
node; the readers take several paths at once (each node's directory) and merge every rank's
events in timestamp order. ``ranks`` says how many events each rank left and how it ended,
and ``status`` names a rank that died (its events stop with no TRAINING_COMPLETED while
others have one) or whose events are missing altogether.

A torn last line (a process killed mid-write) is tolerated and reported; any other line that
is not a valid event is named by file and line: ``strict=True`` raises CorruptLineError,
otherwise it is skipped, reported in ``Replay.problems``, and every other event is kept.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from esper.leyline import CorruptLineError, ReplayError, TelemetryEvent, TelemetryEventType
from esper.nissa.record.files import EVENTS_FILE, RUN_DIR_PREFIX
from esper.nissa.record.jsonl import decode_line


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
    """The first path read (of several, for a run spread over nodes)."""
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
        """How the recorded run ended, as far as its events say (over all its ranks)."""
        return run_status(self.events)

    @property
    def ranks(self) -> list[RankReport]:
        """Each rank's share of a multi-rank run, in rank order (empty for one process)."""
        return rank_reports(self.events)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """How a recorded run ended: ``completed``, ``interrupted`` or ``failed`` (from
    TRAINING_COMPLETED), ``unfinished`` (started, never completed: the process was killed,
    or is still running), ``partial`` (a multi-rank run whose record lacks a rank's events
    altogether, so how it ended cannot be told), or ``unknown`` (no TRAINING_STARTED
    either)."""

    state: str
    detail: str

    @property
    def finished(self) -> bool:
        return self.state in {"completed", "interrupted", "failed"}

    def __str__(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


@dataclass(slots=True)
class RankReport:
    """One rank of a multi-rank run, as its events tell it."""

    rank: int
    events: int = 0
    started: TelemetryEvent | None = None
    completed: TelemetryEvent | None = None
    last_ns: int = 0
    last_epoch: int | None = None

    @property
    def state(self) -> str:
        """``completed``, ``interrupted`` or ``failed`` (from its TRAINING_COMPLETED),
        ``unfinished`` (none), or ``missing`` (no events at all)."""
        if self.completed is not None:
            return str(self.completed.data.get("status", "completed"))
        return "unfinished" if self.events else "missing"

    @property
    def last(self) -> str:
        """When its last event happened (UTC, to the second)."""
        return datetime.fromtimestamp(self.last_ns / 1e9, UTC).isoformat(timespec="seconds")


def rank_reports(events: Iterable[TelemetryEvent]) -> list[RankReport]:
    """Per-rank counts and ends of a multi-rank run's events; ranks the run's
    TRAINING_STARTED events count (``world_size``) but that left no event are ``missing``.
    Empty when no event carries a rank (a single-process run)."""
    reports: dict[int, RankReport] = {}
    world = 0
    for e in events:
        if e.rank is None:
            continue
        r = reports.get(e.rank)
        if r is None:
            r = reports[e.rank] = RankReport(e.rank)
        r.events += 1
        r.last_ns = max(r.last_ns, e.timestamp_ns)
        if e.epoch is not None:
            r.last_epoch = e.epoch
        if e.event_type is TelemetryEventType.TRAINING_STARTED:
            r.started = e
            world = max(world, int(e.data.get("world_size", 1)))
        elif e.event_type is TelemetryEventType.TRAINING_COMPLETED:
            r.completed = e
    for rank in range(world):
        reports.setdefault(rank, RankReport(rank))
    return [reports[k] for k in sorted(reports)]


def run_status(events: Iterable[TelemetryEvent]) -> RunStatus:
    """The RunStatus of a run's events (see RunStatus); for a multi-rank run, of all its
    ranks together (see ``_ranks_status``). A run's status comes from its own events only:
    events of several runs (a reused --telemetry-file, two runs' rank files in one directory)
    are ``mixed``, with each run's status named."""
    by_run: dict[str | None, list[TelemetryEvent]] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e)
    runs = [run_id for run_id in by_run if run_id is not None]
    if len(runs) > 1:
        each = "; ".join(f"{run_id}: {_one_run_status(by_run[run_id])}" for run_id in runs)
        return RunStatus(
            "mixed",
            f"the record holds {len(runs)} runs ({each}); give one run's events "
            "(a --telemetry-file reused by several runs, or several runs' files in one place)",
        )
    return _one_run_status([e for run in by_run.values() for e in run])


def _one_run_status(events: list[TelemetryEvent]) -> RunStatus:
    reports = rank_reports(events)
    if reports:
        return _ranks_status(reports)
    return _process_status(events)


_RUN_ENDS = (TelemetryEventType.TRAINING_STARTED, TelemetryEventType.TRAINING_COMPLETED)


class RunTracker:
    """How the runs of a stream of events ended, in memory bounded by the runs and ranks it
    holds (not by its length): each run's start and end, and each rank's latest event."""

    def __init__(self) -> None:
        self._ends: list[TelemetryEvent] = []
        self._last: dict[tuple[str | None, int | None], TelemetryEvent] = {}

    def observe(self, event: TelemetryEvent) -> None:
        self._last[(event.run_id, event.rank)] = event
        if event.event_type in _RUN_ENDS:
            self._ends.append(event)

    @property
    def saw_a_run(self) -> bool:
        """Whether a TRAINING_STARTED or TRAINING_COMPLETED went by."""
        return bool(self._ends)

    def status(self) -> RunStatus:
        return run_status([*self._ends, *self._last.values()])


def _process_status(events: Iterable[TelemetryEvent]) -> RunStatus:
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


def _ranks_status(reports: list[RankReport]) -> RunStatus:
    """A multi-rank run completed when every rank did. A rank with no TRAINING_COMPLETED
    while another rank has one died (the run ``failed``); one with no events at all is
    ``missing`` (its node's directory was not read, or it never started), and a record
    missing a rank with nothing else wrong is ``partial``, not a verdict on the run; when no
    rank has finished, the run is ``unfinished`` (killed, or still running)."""
    states = {r.rank: r.state for r in reports}
    finished = [r for r in reports if r.completed is not None]
    if all(state == "completed" for state in states.values()):
        lead = reports[0].completed
        return RunStatus("completed", lead.message if lead is not None else "")
    notes = []
    for r in reports:
        if r.state == "missing":
            notes.append(f"rank {r.rank}: no events (its node's run directory not given?)")
        elif r.state == "unfinished":
            dead = " died" if finished else ""
            notes.append(
                f"rank {r.rank}{dead}: its events stop at {r.last}"
                + (f" (epoch {r.last_epoch})" if r.last_epoch is not None else "")
                + ", with no TRAINING_COMPLETED"
            )
        elif r.state != "completed" and r.completed is not None:
            error = r.completed.data.get("error")
            notes.append(f"rank {r.rank} {r.state}" + (f": {error}" if error else ""))
    if not finished:
        state = "unfinished"
    elif any(s in ("failed", "unfinished") for s in states.values()):
        state = "failed"
    elif "missing" in states.values():
        state = "partial"
    else:
        state = "interrupted"
    return RunStatus(state, "; ".join(notes))


Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""One path, or several (the run directories of a multi-rank run's nodes)."""


def _each(paths: Paths) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def resolve_events_files(paths: Paths) -> list[Path]:
    """The JSONL files behind each of ``paths``: a file itself; a run directory's
    ``events.jsonl``, its forked children's ``events.<pid>.jsonl`` and the ranks'
    ``events.rank<R>.jsonl``; or those of the only run directory under the path."""
    files: list[Path] = []
    for p in _each(paths):
        files += [f for f in _resolve(p) if f not in files]
    return files


def _is_run_dir(d: Path) -> bool:
    return (d / EVENTS_FILE).is_file() or bool(_rank_files(d))


def _rank_files(d: Path) -> list[Path]:
    stem, suffix = Path(EVENTS_FILE).stem, Path(EVENTS_FILE).suffix
    found = [f for f in d.glob(f"{stem}.rank*{suffix}") if f.name[len(stem) + 5 : -len(suffix)]
             .isdigit()]  # fmt: skip
    return sorted(found, key=lambda f: int(f.name[len(stem) + 5 : -len(suffix)]))


def _resolve(p: Path) -> list[Path]:
    try:
        p.stat()
    except OSError as exc:  # missing, a symlink loop, a directory we may not enter
        why = exc.strerror or str(exc)
        raise ReplayError(f"{p}: {why[:1].lower()}{why[1:]}") from None
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ReplayError(f"{p}: not a file or directory")
    if _is_run_dir(p):
        return _run_files(p)
    runs = sorted(d for d in p.glob(f"{RUN_DIR_PREFIX}*") if _is_run_dir(d))
    if len(runs) == 1:
        return _run_files(runs[0])
    if not runs:
        raise ReplayError(f"{p}: no {EVENTS_FILE} here or in a {RUN_DIR_PREFIX}* directory")
    names = ", ".join(r.name for r in runs)
    raise ReplayError(f"{p}: holds {len(runs)} run directories; name one of: {names}")


def _run_files(run_dir: Path) -> list[Path]:
    stem, suffix = Path(EVENTS_FILE).stem, Path(EVENTS_FILE).suffix
    ranks = _rank_files(run_dir)
    children = sorted(set(run_dir.glob(f"{stem}.*{suffix}")) - set(ranks))
    main = [run_dir / EVENTS_FILE] if (run_dir / EVENTS_FILE).is_file() else []
    return [*main, *ranks, *children]


def same_file(a: Path, b: Path) -> bool:
    """Whether writing ``a`` would write ``b``: the same path however spelled (relative,
    absolute, through symbolic links) or the same file under another name (a hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def iter_events(
    path: Paths,
    *,
    strict: bool = False,
    problems: list[LineProblem] | None = None,
) -> Iterator[tuple[TelemetryEvent, int]]:
    """Yield (event, seq) for every readable line of the files behind ``path``, lazily:
    one file in its order; several (ranks, forked children) merged by timestamp, each
    file's own order kept.

    Unreadable lines are appended to ``problems`` (when given); with ``strict`` a corrupt
    line that is not the torn last line, or a non-standard JSON token, raises
    CorruptLineError naming file and line.
    """
    files = resolve_events_files(path)
    streams = [_iter_file(f, strict=strict, problems=problems) for f in files]
    if len(streams) == 1:
        yield from streams[0]
    else:
        yield from heapq.merge(*streams, key=lambda pair: pair[0].timestamp_ns)


def _iter_file(
    file: Path, *, strict: bool, problems: list[LineProblem] | None
) -> Iterator[tuple[TelemetryEvent, int]]:
    try:
        fh = file.open("rb")
    except OSError as exc:
        raise ReplayError(f"{file}: cannot read: {exc.strerror or exc}") from None
    with fh:
        lineno = 0
        last_seq: dict[str | None, int] = {}  # each run's latest seq in this file
        for raw in fh:
            lineno += 1
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                event, seq = decode_line(raw.decode("utf-8"), strict=strict)
                # Each writer numbers its lines from 0: within one run they only rise. (Lines
                # of no run, from a hub without a run id, may come from several writers.)
                before = last_seq.get(event.run_id, -1)
                if seq <= before and event.run_id is not None:
                    raise ValueError(
                        f"seq {seq} does not rise (run {event.run_id}'s last line had seq "
                        f"{before}): lines copied or appended twice"
                    )
                last_seq[event.run_id] = seq
            except (UnicodeDecodeError, ValueError) as exc:
                problem = LineProblem(file, lineno, str(exc), torn)
                if strict and not torn:
                    raise CorruptLineError(str(file), lineno, problem.reason) from None
                if problems is not None:
                    problems.append(problem)
                continue
            yield event, seq


def read_events(path: Paths, *, strict: bool = False) -> Replay:
    """Read every event of a JSONL file or run directory, or of several (the nodes' run
    directories of a multi-rank run), merged in timestamp order (see :func:`iter_events`)."""
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
