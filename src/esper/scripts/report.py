"""``esper report``: one self-contained HTML file that shows recorded runs, with no server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.karn.report import AssetError, ReportError
from esper.leyline import ReplayError, UsageError
from esper.nissa.prometheus import tsdb
from esper.runs.report import make_report

EXAMPLES = """examples:
  esper report runs/telemetry_2026-12-08_005304           one run (writes report.html in it)
  esper report node0/telemetry_X node1/telemetry_X -o r.html  a run's nodes
  esper report runs/A runs/B -o compare.html              two runs overlaid
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper report",
        description="Write one HTML file (every script inside; it opens from disk with no "
        "network) that shows recorded runs: the run card and the telemetry's verdict, curves "
        "with smoothing, the seeds' timeline, what went wrong, alerts and ranks. Paths of one "
        "run id merge (a multi-rank run's nodes); several runs are overlaid.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", type=Path, nargs="+",
                   help="events.jsonl, a run directory, or its parent; several for a run's "
                   "nodes or for runs to compare")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="the HTML file to write (default: report.html in the run directory "
                   "given, or in the current directory for several paths); never an "
                   "input")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    p.add_argument("--alerts", action="store_true",
                   help="show which shipped alerts would have fired, and when (needs "
                   "promtool and prometheus, as esper telemetry backfill does)")  # fmt: skip
    p.add_argument("--rules", type=Path,
                   help="directory with alerts.yml and recording.yml (default: "
                   "deploy/prometheus)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rules is not None and not args.alerts:
        print("esper report: error: --rules: only read with --alerts", file=sys.stderr)
        return 2
    try:
        result = make_report(args.path, args.output, strict=args.strict, alerts=args.alerts,
                             rules=args.rules)  # fmt: skip
    except UsageError as exc:
        print(f"esper report: error: {exc}", file=sys.stderr)
        return 2
    except (ReplayError, ReportError, AssetError, tsdb.ToolError, OSError) as exc:
        print(f"esper report: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esper report: interrupted; no report written", file=sys.stderr)
        return 130
    for problem in result.problems:
        print(f"  warning: {problem}", file=sys.stderr)
    runs = ", ".join(f"{r} ({s})" for r, s in zip(result.runs, result.states, strict=True))
    print(f"report: {result.path} ({result.bytes / 1024:.0f} KiB, {result.events:,} events, "
          f"{result.seconds:.1f} s): {runs}")  # fmt: skip
    if result.alerts is not None:
        print(f"  alerts that would have fired: {result.alerts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
