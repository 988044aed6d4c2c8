"""``esper telemetry``: summarise a recorded run, or replay it into backends."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from esper.leyline import ReplayError, TelemetryEventType
from esper.nissa import DirectoryOutput, FileOutput, NissaHub, iter_events, read_events
from esper.nissa.replay import LineProblem


def _summarize(args: argparse.Namespace) -> int:
    replay = read_events(args.path, strict=args.strict)
    events = replay.events
    print(f"{replay.path}: {len(events)} events")
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
    for problem in replay.problems:
        print(f"  warning: {problem}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    hub = NissaHub()
    try:
        if args.telemetry_file:
            hub.add_backend(FileOutput(args.telemetry_file))
        if args.telemetry_dir:
            out = DirectoryOutput(args.telemetry_dir)
            hub.add_backend(out)
            print(f"Telemetry will be saved to: {out.output_dir}")
        problems: list[LineProblem] = []
        n = 0
        for event, _seq in iter_events(args.path, strict=args.strict, problems=problems):
            hub.emit(event)
            n += 1
    finally:
        hub.close()
    print(f"replayed {n} events")
    for problem in problems:
        print(f"  warning: {problem}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esper telemetry", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="count a run's events by type")
    s.add_argument("path", type=Path, help="events.jsonl, a run directory, or its parent")
    s.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    r = sub.add_parser("replay", help="send a recorded run's events into backends")
    r.add_argument("path", type=Path, help="events.jsonl, a run directory, or its parent")
    r.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    r.add_argument("--telemetry-file", type=Path, help="append the events to this JSONL file")
    r.add_argument("--telemetry-dir", type=Path, help="write them to a new run directory here")
    args = p.parse_args(argv)
    if args.command == "replay" and not (args.telemetry_file or args.telemetry_dir):
        p.error("replay needs --telemetry-file or --telemetry-dir")
    try:
        return int(_summarize(args) if args.command == "summarize" else _replay(args))
    except ReplayError as exc:
        print(f"esper telemetry: error: {exc}", file=sys.stderr)
        return 1
