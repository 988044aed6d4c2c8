"""The ``esper`` command: dispatches to ``train``, ``telemetry`` and ``docs``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from esper.scripts import dashboards, docs, offline, report, sanctum, targets, telemetry, train

USAGE = """usage: esper COMMAND [ARGS...]

commands:
  train {ppo,heuristic}   train with a PPO or heuristic controller (esper train --help)
  telemetry               summarise a recorded run, or replay it into backends
  report RUN...           one HTML file that shows recorded runs (opens offline)
  docs                    regenerate docs/EVENTS.md and docs/METRICS.md from the catalogues
  dashboards              regenerate the Grafana dashboards in dashboards/
  sanctum RUN             the Sanctum terminal dashboard over a recorded run
  offline                 record heuristic episodes, train IQL, compare controllers
  targets {list,prune} DIR  the scrape targets trainers registered; prune those of dead ones
"""


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": train.main,
    "telemetry": telemetry.main,
    "report": report.main,
    "docs": docs.main,
    "dashboards": dashboards.main,
    "sanctum": sanctum.main,
    "offline": offline.main,
    "targets": targets.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    commands = COMMANDS
    if args[0] not in commands:
        print(USAGE, end="", file=sys.stderr)
        print(f"esper: error: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    try:
        return commands[args[0]](args[1:])
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
