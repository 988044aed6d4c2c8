"""``esper docs``: regenerate the generated reference pages (docs/EVENTS.md, docs/METRICS.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from esper.leyline import render_events_markdown
from esper.nissa.metric_catalogue import render_metrics_markdown

GENERATED: dict[str, Callable[[], str]] = {
    "EVENTS.md": render_events_markdown,
    "METRICS.md": render_metrics_markdown,
}
"""File name under the docs directory -> function that renders it."""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esper docs", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs"), help="docs directory")
    p.add_argument("--check", action="store_true", help="fail if a page is out of date")
    args = p.parse_args(argv)
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
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run 'esper docs'): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0
