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
from esper.nissa.replay import LineProblem


def load(path: Path) -> tuple[SanctumAggregator, list[LineProblem]]:
    """An aggregator holding every readable event of the run at ``path``."""
    aggregator = SanctumAggregator()
    problems: list[LineProblem] = []
    for event, _seq in iter_events(path, problems=problems):
        aggregator.process_event(event)
    return aggregator, problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esper sanctum", description=__doc__)
    p.add_argument("path", type=Path, help="events.jsonl, a run directory, or its parent")
    args = p.parse_args(argv)
    try:
        aggregator, problems = load(args.path)
    except ReplayError as exc:
        print(f"esper sanctum: error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    snapshot = aggregator.get_snapshot()
    if snapshot.run_config.run_id and not snapshot.completed:
        print(f"warning: {args.path}: the run has no TRAINING_COMPLETED: it was killed, is "
              "still running, or its record was cut short", file=sys.stderr)  # fmt: skip
    SanctumApp(aggregator.get_snapshot, interval=2.0, live=False).run()
    return 0
