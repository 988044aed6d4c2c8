"""Checks run before any work starts: every output path a command will need is writable.

A run that trains for an hour and then cannot write its checkpoint has lost the hour. Each
check really creates (and removes) a file where the output will go, which catches what
``os.access`` misses: a read-only file system, a parent that is a file, and root's writes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from esper.leyline import UsageError
from esper.nissa.record.replay import same_file


def _probe_dir(flag: str, directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".esper-probe-", dir=directory)
    except OSError as exc:
        raise UsageError(f"{flag} {what}: cannot write in {directory}: "
                         f"{exc.strerror or exc}") from None  # fmt: skip
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_file(flag: str, path: Path) -> None:
    """Raise UsageError naming ``flag`` and ``path`` unless a file can be written there."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the existing file is not writable")
    _probe_dir(flag, path.parent if str(path.parent) else Path("."), str(path))


def check_output_dir(flag: str, path: Path) -> None:
    """Raise UsageError naming ``flag`` and ``path`` unless files can be written inside it
    (it is created if missing)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is not a directory")
    _probe_dir(flag, path, str(path))


def check_not_an_input(
    flag: str, out: Path, inputs: list[Path], *, directory: bool = False, what: str = "the record"
) -> None:
    """Raise UsageError naming ``flag`` when writing ``out`` would write over one of the
    record's files ``inputs`` (the same path however spelled, a symbolic or a hard link), or,
    for an output ``directory``, when it holds one of them. A command never destroys what it
    reads."""
    for f in inputs:
        if same_file(out, f):
            raise UsageError(f"{flag} {out}: is {what} {f} being read (it would be "
                             "overwritten); write to another path")  # fmt: skip
        if directory and f.resolve().is_relative_to(out.resolve()):
            raise UsageError(f"{flag} {out}: holds {what} {f} being read; write to a "
                             "new or empty directory elsewhere")  # fmt: skip
