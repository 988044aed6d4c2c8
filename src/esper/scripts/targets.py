"""``esper targets list|prune DIR``: the scrape targets trainers registered for Prometheus.

A trainer run with ``--metrics-sd-dir DIR`` writes ``DIR/esper-<run_id>.json`` and removes it
when it ends. A trainer killed with ``kill -9`` (or by the OOM killer) cannot: its target stays,
Prometheus keeps failing to scrape it, and ``EsperTrainerDown`` fires forever. ``list`` shows
every registered target with the state of the process behind it; ``prune`` removes the targets
whose process is gone.

A target's owner is named in its ``__esper_*`` labels (host, pid, process start time). On this
host the process table decides: ``alive``, or ``dead`` (no such process, or the pid now belongs
to a process that started later). A target registered from another host is ``remote``: probed
over HTTP it is ``remote, answering`` or ``remote, not answering``; ``prune --unreachable``
removes the latter too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.nissa.prometheus.targets import OWNER_HOST, OWNER_PID, OWNER_START, process_start_ticks

PROBE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Target:
    """One registered target file and what is known of its process."""

    path: Path
    targets: tuple[str, ...]
    run_id: str
    host: str
    pid: int | None
    state: str
    """alive, dead, remote-answering, remote-silent or unknown (no owner labels)."""

    @property
    def stale(self) -> bool:
        return self.state == "dead"


PID_MAX = 1 << 22
"""The largest pid Linux hands out (``/proc/sys/kernel/pid_max`` is at most 2**22)."""


def parse_pid(text: str) -> int | None:
    """A pid as a target file records it: ASCII digits for a number in 1..PID_MAX, else None
    (``str.isdigit`` also takes ``"²"``, which ``int`` refuses, and a 5,000-digit number is
    past what ``int`` converts)."""
    if not re.fullmatch(r"[0-9]{1,7}", text):
        return None
    pid = int(text)
    return pid if 0 < pid <= PID_MAX else None


def _state(labels: dict[str, str], targets: Sequence[str], pid: int | None) -> str:
    host = labels.get(OWNER_HOST)
    if not host or pid is None:
        return "unknown"
    if host != socket.gethostname():
        return "remote-answering" if any(_answers(t) for t in targets) else "remote-silent"
    started = process_start_ticks(pid)
    if started is None:
        return "dead"
    recorded = labels.get(OWNER_START)
    return "dead" if recorded and recorded != started else "alive"


def _answers(target: str) -> bool:
    for scheme in ("http", "https"):
        try:
            url = f"{scheme}://{target}/metrics"  # the scheme is ours: never file: or custom
            with urllib.request.urlopen(url, timeout=PROBE_SECONDS):  # noqa: S310
                return True
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return False


def read_targets(directory: Path) -> list[Target]:
    """Every ``*.json`` target file in ``directory``, oldest name first."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            groups = json.loads(path.read_text())
            group = groups[0]
            labels = {str(k): str(v) for k, v in group.get("labels", {}).items()}
            targets = tuple(str(t) for t in group["targets"])
        except (OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
            print(f"warning: {path}: not a file_sd target file ({exc})", file=sys.stderr)
            continue
        pid_text = labels.get(OWNER_PID)
        pid = None if pid_text is None else parse_pid(pid_text)
        if pid_text is not None and pid is None:
            print(f"warning: {path}: skipped: its {OWNER_PID} label {pid_text[:20]!r}"
                  f"{'...' if len(pid_text) > 20 else ''} is not a pid (1..{PID_MAX})",
                  file=sys.stderr)  # fmt: skip
            continue
        found.append(
            Target(path, targets, labels.get("run_id", "-"), labels.get(OWNER_HOST, "-"),
                   pid, _state(labels, targets, pid))
        )  # fmt: skip
    return found


def _list(directory: Path) -> int:
    rows = read_targets(directory)
    if not rows:
        print(f"{directory}: no registered targets")
    for t in rows:
        print(f"{t.path.name}  {', '.join(t.targets)}  run {t.run_id}  host {t.host}  "
              f"pid {t.pid if t.pid is not None else '-'}  {t.state}")  # fmt: skip
    return 0


def _prune(directory: Path, *, unreachable: bool, dry_run: bool) -> int:
    removed = 0
    for t in read_targets(directory):
        if t.stale or (unreachable and t.state == "remote-silent"):
            verb = "would remove" if dry_run else "removed"
            if not dry_run:
                t.path.unlink(missing_ok=True)
            removed += 1
            print(f"{verb} {t.path.name} (run {t.run_id}, pid {t.pid}, {t.state})")
    print(f"{removed} stale target(s) {'found' if dry_run else 'removed'} in {directory}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper targets``."""
    p = argparse.ArgumentParser(prog="esper targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="show every registered target and its process's state")
    ls.add_argument("directory", type=Path, help="the --metrics-sd-dir of the trainers")
    pr = sub.add_parser("prune", help="remove the targets whose process is gone")
    pr.add_argument("directory", type=Path, help="the --metrics-sd-dir of the trainers")
    pr.add_argument("--unreachable", action="store_true",
                    help="also remove targets of other hosts that do not answer")  # fmt: skip
    pr.add_argument("--dry-run", action="store_true", help="say what would be removed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.directory.is_dir():
        print(f"esper targets: error: {args.directory}: not a directory", file=sys.stderr)
        return 2
    if args.command == "list":
        return _list(args.directory)
    if not os.access(args.directory, os.W_OK):
        print(f"esper targets: error: {args.directory}: not writable", file=sys.stderr)
        return 2
    return _prune(args.directory, unreachable=args.unreachable, dry_run=args.dry_run)
