"""``esper telemetry``: summarise a recorded run, or replay it into backends."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from esper.leyline import (
    BackendConfigError,
    ReplayError,
    TelemetryEvent,
    TelemetryEventType,
    UsageError,
)
from esper.nissa import NissaHub, iter_events, read_events
from esper.nissa.backends import BackendSpec
from esper.nissa.replay import LineProblem, RunTracker, resolve_events_files
from esper.runs.session import EXIT_FAILURE, EXIT_OK, RunSession
from esper.scripts._preflight import check_output_dir, check_output_file

_PATH_HELP = (
    "events.jsonl, a run directory, or its parent; several for a multi-rank run's nodes "
    "(their ranks are merged)"
)


def _where(paths: list[Path]) -> str:
    """The paths a command was given, for its messages."""
    return " ".join(str(p) for p in paths)


_MARKERS = {
    "completed": "",
    "unknown": "",
    "partial": "  <-- the record lacks a rank: give every node's run directory",
    "mixed": "  <-- the record mixes runs: each run's status is its own",
}
"""What summarize adds to a status line (any other state: the run did not complete)."""


def _summarize(args: argparse.Namespace) -> int:
    replay = read_events(args.path, strict=args.strict)
    events = replay.events
    where = _where(args.path)
    print(f"{replay.path if len(replay.files) == 1 else where}: {len(events)} events")
    if len(replay.files) > 1:
        for file, n in replay.file_counts.items():
            print(f"  file {file if len(args.path) > 1 else file.name}: {n} events")
    for r in replay.ranks:
        node = "" if r.started is None else f" on {r.started.data.get('node')}"
        end = "" if r.events == 0 else f", last at {r.last}"
        print(f"  rank {r.rank}{node}: {r.events} events, {r.state}{end}")
    status = replay.status
    marker = _MARKERS.get(status.state, "  <-- the run did not complete")
    print(f"  status: {status}{marker}")
    if events:
        first, last = events[0], events[-1]
        span = (last.timestamp_ns - first.timestamp_ns) / 1e9
        print(f"  run_id: {', '.join(sorted({str(e.run_id) for e in events}))}")
        print(
            f"  from {first.timestamp.isoformat()} to {last.timestamp.isoformat()} ({span:.1f} s)"
        )
    counts = Counter(e.event_type.name for e in events)
    for name, n in sorted(counts.items()):
        print(f"  {name:<26} {n}")
    kinds = Counter(
        e.data.get("kind") for e in events if e.event_type is TelemetryEventType.ANALYTICS_SNAPSHOT
    )
    for kind, n in sorted(kinds.items(), key=lambda kv: str(kv[0])):
        print(f"    ANALYTICS_SNAPSHOT kind={kind:<20} {n}")
    report = anomaly_report(events)
    if report:
        print("  what went wrong, when, and where the record holds its detail:")
        print("\n".join(f"    {line}" for line in report))
    for problem in replay.problems:
        print(f"  warning: {problem}", file=sys.stderr)
    if not status.finished and status.state != "unknown":
        print(f"warning: {where}: {status.detail}", file=sys.stderr)
    return 0


def anomaly_report(events: Sequence[TelemetryEvent]) -> list[str]:
    """One line per anomaly (gradient anomalies and loss spikes, rollbacks, regression culls):
    when, where, what, and the epochs its escalation recorded at debug level."""
    windows: dict[str, tuple[int | None, int | None, int]] = {}  # trigger id -> env, from, to
    opened: dict[tuple[int | None, int | None], TelemetryEvent] = {}
    for e in events:
        if e.event_type is not TelemetryEventType.TELEMETRY_LEVEL_CHANGED:
            continue
        key = (e.rank, e.data.get("env_id"))
        if e.data.get("to_level") == "debug":
            opened[key] = e
        elif key in opened:
            start = opened.pop(key)
            trigger = start.data.get("trigger_event_id")
            if isinstance(trigger, str):
                windows[trigger] = (start.data.get("env_id"), start.epoch,
                                    int(e.data.get("until_epoch", 0)))  # fmt: skip
    unclosed = {  # the record ends inside these windows (a killed run): say so, not "none"
        s.data.get("trigger_event_id"): s for s in opened.values()
    }
    lines = []
    for e in events:
        what = _anomaly(e)
        if what is None:
            continue
        d = e.data
        env = "policy" if d.get("env_id") is None else f"env {d.get('env_id')}"
        rank = "" if e.rank is None else f"rank {e.rank} "
        window = windows.get(e.event_id)
        still_open = unclosed.get(e.event_id)
        if still_open is not None:
            who = "every env" if still_open.data.get("env_id") is None else (
                f"env {still_open.data.get('env_id')}")  # fmt: skip
            detail = (f"{who} at debug from epoch {still_open.epoch}; the record ends inside "
                      "the window")  # fmt: skip
        elif window is None:
            detail = "no escalation"
        else:
            who = "every env" if window[0] is None else f"env {window[0]}"
            detail = f"{who} at debug, epochs {window[1]}..{window[2]}"
        when = e.timestamp.isoformat(timespec="seconds")
        lines.append(f"{when} {rank}{env} epoch {e.epoch}: {what}; {detail}")
    return lines


def _anomaly(e: TelemetryEvent) -> str | None:
    d = e.data
    if e.event_type is TelemetryEventType.GRADIENT_ANOMALY:
        value, threshold = d.get("value"), d.get("threshold")
        bound = "" if threshold is None else f" (threshold {threshold:.3g})"
        return f"{d.get('scope')} {d.get('kind')}, {value:.3g}{bound}"
    if e.event_type is TelemetryEventType.GOVERNOR_ROLLBACK:
        return f"rollback on {d.get('reason')} (loss {d.get('loss_at_panic')})"
    if e.event_type is TelemetryEventType.SEED_CULLED and d.get("reason") == "blend_regression":
        return f"seed {e.seed_id} in {e.slot_id} culled for a blend regression"
    return None


def _replay(args: argparse.Namespace) -> int:
    # The inputs are found before any output exists: a new run directory under an input's
    # parent is then never read back, and an output that is an input is refused.
    files = resolve_events_files(args.path)
    if args.telemetry_file is not None:
        check_output_file("--telemetry-file", args.telemetry_file)
        if any(_same_file(args.telemetry_file, f) for f in files):
            raise UsageError(
                f"--telemetry-file {args.telemetry_file}: is one of the files being replayed "
                "(it would read its own output back); write to another file"
            )
    if args.telemetry_dir is not None:
        check_output_dir("--telemetry-dir", args.telemetry_dir)
    problems: list[LineProblem] = []
    source: Iterable[tuple[TelemetryEvent, int]]
    if args.strict:
        # Read (and so check) the whole input before any output exists: a corrupt line
        # then leaves nothing half-written behind.
        replay = read_events(files, strict=True)
        source = zip(replay.events, replay.seqs, strict=True)
        problems = replay.problems
    else:
        source = iter_events(files, problems=problems)
    session = RunSession(
        BackendSpec(telemetry_file=args.telemetry_file, telemetry_dir=args.telemetry_dir),
        hub=NissaHub(),
    )
    n = 0
    runs = RunTracker()  # how the run ended, without keeping a streamed run in memory
    code = EXIT_FAILURE
    try:
        for event, _seq in source:
            session.hub.emit(event)
            n += 1
            runs.observe(event)
        code = EXIT_OK
    finally:
        session.close(interrupted=code != EXIT_OK)
    status = runs.status()
    where = _where(args.path)
    print(f"replayed {n} events; the recorded run's status: {status}")
    if not status.finished and status.state != "unknown":
        print(f"warning: {where}: {status.detail}", file=sys.stderr)
    for problem in problems:
        print(f"  warning: {problem}", file=sys.stderr)
    summary = session.summary()
    print(summary.text)
    return summary.exit_status(code)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and a.samefile(b)
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esper telemetry", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="count a run's events by type; say how it ended")
    s.add_argument("path", type=Path, nargs="+", help=_PATH_HELP)
    s.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    r = sub.add_parser("replay", help="send a recorded run's events into backends")
    r.add_argument("path", type=Path, nargs="+", help=_PATH_HELP)
    r.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt line or non-standard JSON token (writing nothing)",
    )
    r.add_argument("--telemetry-file", type=Path, help="append the events to this JSONL file")
    r.add_argument("--telemetry-dir", type=Path, help="write them to a new run directory here")
    args = p.parse_args(argv)
    if args.command == "replay" and not (args.telemetry_file or args.telemetry_dir):
        p.error("replay needs --telemetry-file or --telemetry-dir")
    try:
        return int(_summarize(args) if args.command == "summarize" else _replay(args))
    except (UsageError, BackendConfigError) as exc:
        print(f"esper telemetry: error: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"esper telemetry: error: {exc}", file=sys.stderr)
        return 1
