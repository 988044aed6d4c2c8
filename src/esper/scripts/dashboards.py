"""``esper dashboards``: regenerate (or check) the Grafana dashboard JSON in dashboards/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.karn.grafana import DASHBOARDS, render, write_all
from esper.leyline import UsageError
from esper.scripts._preflight import check_output_dir


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper dashboards``."""
    p = argparse.ArgumentParser(prog="esper dashboards", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("dashboards"), help="dashboards directory")
    p.add_argument("--check", action="store_true", help="fail if a dashboard is out of date")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"esper dashboards: error: --out {args.out}: is not a directory", file=sys.stderr)
        return 2
    if args.check:
        stale = [
            str(args.out / name)
            for name in DASHBOARDS
            if not (args.out / name).exists()
            or (args.out / name).read_text(encoding="utf-8") != render(name)
        ]
        if stale:
            print(f"out of date (run 'esper dashboards'): {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    try:
        check_output_dir("--out", args.out)
        written = write_all(args.out)
    except UsageError as exc:
        print(f"esper dashboards: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"esper dashboards: error: --out {args.out}: cannot write: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
