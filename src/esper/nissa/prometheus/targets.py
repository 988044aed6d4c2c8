"""A scrape target a trainer registers for Prometheus ``file_sd``, and the identity of the
process that owns it.

``write_target_file`` writes ``esper-<run_id>[-rank<R>].json`` atomically; the target names its
owner (host, pid and the process's start time) in labels that begin with ``__``, which
Prometheus drops after relabelling, so ``esper targets prune`` can remove the targets of dead
processes. ``process_stat`` is the one reader of ``/proc/<pid>/stat`` (also used by
``esper.runs.distributed`` to tell a stopped rank from a live one).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from esper.leyline import BackendConfigError

OWNER_HOST = "__esper_host"
OWNER_PID = "__esper_pid"
OWNER_START = "__esper_start"
"""Labels of a registered target that name the process serving it (dropped by Prometheus)."""


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """The fields of ``/proc/<pid>/stat`` Esper reads."""

    state: str
    """R, S, D, T (stopped), t (traced), Z (zombie), X (dead)..."""
    start_ticks: str
    """When the process started, in clock ticks since boot: with the pid it names one
    process (a pid reused by a later process has another start time)."""


def process_stat(pid: int) -> ProcessStat | None:
    """``/proc/<pid>/stat`` (Linux) parsed, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last
    # closing parenthesis (field 3, the state, is the first of them).
    fields = text.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return ProcessStat(state=fields[0], start_ticks=fields[19])


def process_start_ticks(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot, or None (see ``ProcessStat``)."""
    stat = process_stat(pid)
    return None if stat is None else stat.start_ticks


def target_address(host: str, port: int) -> str:
    """``host:port`` as a scrape target (the wildcard named by this host's name)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_target_file(
    directory: str | os.PathLike[str], *, host: str, port: int, labels: dict[str, str]
) -> Path:
    """Register ``host:port`` for file-based service discovery: writes
    ``directory/esper-<run_id>.json`` (``esper-<run_id>-rank<R>.json`` for a rank of a
    multi-rank run, labelled ``rank``) atomically, with this process as its owner. A directory
    that cannot be written is a BackendConfigError naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        rank = f"-rank{labels['rank']}" if "rank" in labels else ""
        name = f"esper-{labels.get('run_id', os.getpid())}{rank}.json"
        owner = {
            OWNER_HOST: socket.gethostname(),
            OWNER_PID: str(os.getpid()),
            OWNER_START: process_start_ticks(os.getpid()) or "",
        }
        group = [{"targets": [target_address(host, port)], "labels": {**labels, **owner}}]
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".esper-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(group, indent=2))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; Prometheus may run as another user
        path = directory / name
        os.replace(tmp, path)
    except OSError as exc:
        raise BackendConfigError(
            f"cannot write service discovery file in {directory}: {exc.strerror or exc}"
        ) from exc
    return path
