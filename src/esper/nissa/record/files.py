"""JSONL file backends: FileOutput (one file, appended) and DirectoryOutput (a run directory)."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from esper.leyline import BackendConfigError, BackendError, TelemetryEvent
from esper.nissa.hub.backend import OutputBackend
from esper.nissa.hub.fork import register_fork_resource
from esper.nissa.record.jsonl import encode_line

RUN_DIR_PREFIX = "telemetry_"
RUN_DIR_TIME_FORMAT = "%Y-%m-%d_%H%M%S"
EVENTS_FILE = "events.jsonl"


def rank_file_name(name: str, rank: int) -> str:
    """The file of one rank of a multi-rank run: ``events.jsonl`` -> ``events.rank1.jsonl``."""
    path = Path(name)
    return f"{path.stem}.rank{rank}{path.suffix}"


_MAX_UNWRITTEN_BYTES = 64 * 1024 * 1024
"""Bytes kept in memory while writes fail (e.g. a full disk) before new lines are dropped."""


class FileOutput(OutputBackend):
    """Appends events as JSONL lines to ``path``, writing every ``buffer_size`` events.

    Lines are written with ``os.write`` on an ``O_APPEND`` descriptor, so a killed process
    leaves at most a torn last line. When a write fails (a full disk), the unwritten bytes are
    kept (up to 64 MiB) and retried on the next write; ``emit`` never raises for it, ``flush``
    raises BackendError naming the file, and the hub reports that once. Every line is counted
    exactly once: on disk (``lines_written``), still held in memory (``lines_unwritten``), or
    ``lost`` (over the memory cap, or still unwritten at close; a line torn by a partial write
    counts as lost). ``lines_taken = lines_written + lines_unwritten + lost``.

    In a forked child the output continues in a file of its own, ``<stem>.<pid><suffix>``
    beside ``path`` (created on the child's first write), with its own ``seq`` numbers: ``seq``
    is unique and strictly increasing within each file.
    """

    def __init__(
        self, path: str | os.PathLike[str], buffer_size: int = 10, *, exclusive: bool = False
    ) -> None:
        """``exclusive``: the file must not exist yet (a rank's file in a shared run
        directory: finding one means another run took the name)."""
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.path = Path(path)
        self.buffer_size = buffer_size
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = self._open(self.path, exclusive=exclusive)
        except FileExistsError:
            raise BackendConfigError(
                f"telemetry file {self.path} already exists (another run wrote it)"
            ) from None
        except OSError as exc:
            raise BackendConfigError(
                f"cannot open telemetry file {self.path}: {exc.strerror or exc}"
            ) from exc
        self._closed = False
        self._init_state()
        register_fork_resource(self)

    @staticmethod
    def _open(path: Path, *, exclusive: bool = False) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(path, flags | (os.O_EXCL if exclusive else 0), 0o644)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._pending: list[bytes] = []
        self._unwritten = bytearray()
        self.lines_taken = 0
        self.lines_written = 0
        self.lines_dropped = 0

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    @property
    def lost(self) -> int:
        return self.lines_dropped

    @property
    def lines_unwritten(self) -> int:
        """Lines taken but not yet on disk (kept in memory for the next write)."""
        return self.lines_taken - self.lines_written - self.lines_dropped

    def emit(self, event: TelemetryEvent) -> None:
        line = encode_line(event, next(self._seq))  # encode outside the lock
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.path}: event after close")
            self.lines_taken += 1
            self._pending.append(line)
            if len(self._pending) >= self.buffer_size:
                # On failure the lines are kept for retry and flush() raises the error.
                with contextlib.suppress(BackendError):
                    self._write_locked()

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._write_locked()

    def close(self) -> None:
        """Write what is left; whatever cannot be written now is counted as lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._write_locked()
            finally:
                # Complete lines still in memory, and a line torn by a partial write, are lost.
                self.lines_dropped += self._unwritten.count(b"\n")
                self._unwritten.clear()
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def _write_locked(self) -> None:
        if self._pending:
            blob = b"".join(self._pending)
            if len(self._unwritten) + len(blob) > _MAX_UNWRITTEN_BYTES:
                self.lines_dropped += len(self._pending)
            else:
                self._unwritten += blob
            self._pending.clear()
        if not self._unwritten:
            return
        view = memoryview(self._unwritten)
        done = 0
        try:
            if self._fd is None:  # a forked child's own file, opened on its first write
                self._fd = self._open(self.path)
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            raise BackendError(
                f"writing {self.path}: {exc.strerror or exc} "
                f"({len(view) - done} bytes kept for retry)"
            ) from exc
        finally:
            view.release()
            self.lines_written += self._unwritten.count(b"\n", 0, done)
            del self._unwritten[:done]

    def _reinit_after_fork(self) -> None:
        # The parent writes what it had buffered; the child writes a file of its own, so the
        # two never interleave lines or share seq numbers.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the child's copy of the descriptor only
            self._fd = None
        self.path = self.path.with_name(f"{self.path.stem}.{os.getpid()}{self.path.suffix}")
        self._init_state()


def _make_run_dir(base: Path) -> Path:
    """Create ``base/telemetry_YYYY-MM-DD_HHMMSS``; if that second is taken, the next free one.

    Moving to the next second (rather than adding a suffix) keeps every name parseable with
    ``%Y-%m-%d_%H%M%S`` and sorted in creation order; mkdir is atomic, so two processes never
    share a directory.
    """
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendConfigError(
            f"cannot create telemetry directory {base}: {exc.strerror or exc}"
        ) from exc
    stamp = datetime.now(UTC).replace(microsecond=0)
    for _ in range(10_000):
        candidate = base / run_dir_name(stamp)
        try:
            candidate.mkdir()
        except FileExistsError:
            stamp += timedelta(seconds=1)
            continue
        except OSError as exc:
            raise BackendConfigError(
                f"cannot create run directory {candidate}: {exc.strerror or exc}"
            ) from exc
        return candidate
    raise BackendConfigError(f"no free run directory name under {base}")


def parse_run_dir_time(path: str | os.PathLike[str]) -> datetime:
    """The UTC time encoded in a run directory's name."""
    name = Path(path).name
    if not name.startswith(RUN_DIR_PREFIX):
        raise ValueError(f"{name!r} is not a run directory name")
    stamp = datetime.strptime(name[len(RUN_DIR_PREFIX) :], RUN_DIR_TIME_FORMAT)
    return stamp.replace(tzinfo=UTC)


def run_dir_name(stamp: datetime) -> str:
    """``telemetry_YYYY-MM-DD_HHMMSS`` for a UTC time."""
    return f"{RUN_DIR_PREFIX}{stamp:{RUN_DIR_TIME_FORMAT}}"


def free_run_dir_name(base: str | os.PathLike[str]) -> str:
    """A run directory name (now, UTC) not yet taken under ``base``: what rank 0 of a
    multi-rank run chooses for every node's run directory."""
    stamp = datetime.now(UTC).replace(microsecond=0)
    while (Path(base) / run_dir_name(stamp)).exists():
        stamp += timedelta(seconds=1)
    return run_dir_name(stamp)


class DirectoryOutput(FileOutput):
    """Creates a run directory ``base_path/telemetry_YYYY-MM-DD_HHMMSS/`` and writes
    ``events.jsonl`` inside it (UTC time). ``output_dir`` is the directory created.

    A rank of a multi-rank run (``rank``) writes ``events.rank<R>.jsonl`` in the directory
    ``name`` that rank 0 chose (its start time), shared by the ranks of each node and made
    by whichever comes first; the rank's file must be new."""

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        buffer_size: int = 10,
        *,
        rank: int | None = None,
        name: str | None = None,
    ) -> None:
        if rank is None:
            self.output_dir = _make_run_dir(Path(base_path))
            super().__init__(self.output_dir / EVENTS_FILE, buffer_size=buffer_size)
            return
        if name is None:
            raise ValueError("a rank's run directory needs the name rank 0 chose")
        self.output_dir = Path(base_path) / name
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"cannot create run directory {self.output_dir}: {exc.strerror or exc}"
            ) from exc
        super().__init__(
            self.output_dir / rank_file_name(EVENTS_FILE, rank),
            buffer_size=buffer_size,
            exclusive=True,
        )

    @property
    def name(self) -> str:
        return f"dir:{self.output_dir}"
