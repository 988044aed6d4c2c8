"""``esper sanctum RUN``: the Sanctum terminal dashboard over a recorded run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.karn.sanctum import SanctumAggregator
from esper.karn.sanctum.app import SanctumApp
from esper.leyline import ReplayError
from esper.nissa import iter_events
from esper.nissa.record.replay import LineProblem


def load(path: Path | Sequence[Path]) -> tuple[SanctumAggregator, list[LineProblem]]:
    """An aggregator holding every readable event of the run at ``path`` (or at several
    paths: the nodes' run directories of a multi-rank run)."""
    aggregator = SanctumAggregator()
    problems: list[LineProblem] = []
    for event, _seq in iter_events(path, problems=problems):
        aggregator.process_event(event)
    return aggregator, problems


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper sanctum``."""
    p = argparse.ArgumentParser(prog="esper sanctum", description=__doc__)
    p.add_argument(
        "path",
        type=Path,
        nargs="+",
        help="events.jsonl, a run directory, or its parent; several for a multi-rank run's nodes",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # The full-screen view needs a terminal to draw in and to read keys from; redirected,
        # it would wait forever for a key. Say so, and print what it would have shown.
        print(
            "esper sanctum: not a terminal (input or output is redirected): printing the "
            "run's summary instead; run it in a terminal for the full view",
            file=sys.stderr,
        )
        from esper.scripts import telemetry  # noqa: PLC0415 - only this path needs it

        return telemetry.main(["summarize", *map(str, args.path)])
    try:
        aggregator, problems = load(args.path)
    except ReplayError as exc:
        print(f"esper sanctum: error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    where = " ".join(str(p) for p in args.path)
    status = aggregator.status()
    if status is not None and status.state not in ("completed", "unknown"):
        print(f"warning: {where}: the run's record says {status}", file=sys.stderr)
    SanctumApp(aggregator.get_snapshot, interval=2.0, live=False).run()
    return 0
