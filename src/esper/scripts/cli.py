"""The ``esper`` command: dispatches to ``train``, ``telemetry`` and ``docs``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

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


COMMANDS: dict[str, str] = {
    "train": "esper.scripts.train",
    "telemetry": "esper.scripts.telemetry",
    "report": "esper.scripts.report",
    "docs": "esper.scripts.docs",
    "dashboards": "esper.scripts.dashboards",
    "sanctum": "esper.scripts.sanctum",
    "offline": "esper.scripts.offline",
    "targets": "esper.scripts.targets",
}
"""Each command's module, imported only when it runs: reading a record need not load torch."""


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
        command: int = importlib.import_module(commands[args[0]]).main(args[1:])
        return command
    except KeyboardInterrupt:
        # Ctrl-C before the command took over its own signals (while torch loads, say): the
        # command did nothing yet, or says so itself; no traceback for an expected interrupt.
        print(f"esper {args[0]}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
