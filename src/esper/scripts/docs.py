"""``esper docs``: regenerate the generated reference pages (docs/EVENTS.md, docs/METRICS.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from esper.leyline import UsageError, render_events_markdown
from esper.nissa.prometheus.catalogue import render_metrics_markdown
from esper.scripts._preflight import check_output_dir

GENERATED: dict[str, Callable[[], str]] = {
    "EVENTS.md": render_events_markdown,
    "METRICS.md": render_metrics_markdown,
}
"""File name under the docs directory -> function that renders it."""


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper docs``."""
    p = argparse.ArgumentParser(prog="esper docs", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs"), help="docs directory")
    p.add_argument("--check", action="store_true", help="fail if a page is out of date")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"esper docs: error: --out {args.out}: is not a directory", file=sys.stderr)
        return 2
    try:
        return _generate(args)
    except UsageError as exc:
        print(f"esper docs: error: {exc}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    if not args.check:
        check_output_dir("--out", args.out)
    stale = []
    for name, render in GENERATED.items():
        path = args.out / name
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            try:
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--out {args.out}: cannot write {path}: {exc.strerror}") from exc
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run 'esper docs'): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0
