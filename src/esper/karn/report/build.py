"""From recorded runs to the report page: read, group by run, build each run's view, render,
and write the file whole (or not at all)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from esper.karn.report.assets import read_assets
from esper.karn.report.model import build_run
from esper.karn.report.page import render
from esper.karn.report.spans import locate_spans
from esper.karn.report.views import Band, RunView
from esper.leyline import TelemetryEvent
from esper.nissa import read_events
from esper.nissa.record.replay import LineProblem, Paths


class ReportError(RuntimeError):
    """The record cannot make a report (the message names the path and why)."""


@dataclass(slots=True)
class Report:
    """The runs of a record, ready to render."""

    runs: list[RunView]
    events: int
    problems: list[LineProblem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    run_events: dict[str, list[TelemetryEvent]] = field(default_factory=dict)
    """Each run's events (for the alerts, which replay them)."""

    def html(self, *, alerts: Sequence[Band] | None = None, alerts_note: str = "") -> str:
        """The page (AssetError when uPlot is not installed)."""
        return render(self.runs, read_assets(), alerts=alerts, alerts_note=alerts_note)


def _where(paths: Paths) -> str:
    if isinstance(paths, str | os.PathLike):
        return str(paths)
    return " ".join(str(p) for p in paths)


def build_report(paths: Paths, *, strict: bool = False) -> Report:
    """Read ``paths`` (run directories, JSONL files, or each node's run directory of a
    multi-rank run) and build a view of every run in them: the events of one run id merge
    (its ranks and nodes), and several run ids are overlaid, in the order they started.

    Raises ReplayError (unreadable paths; a corrupt line with ``strict``) and ReportError (a
    record with no event, or none that is an Esper event)."""
    replay = read_events(paths, strict=strict)
    where = _where(paths)
    if not replay.events:
        if replay.problems:
            first = replay.problems[0]
            raise ReportError(
                f"{where}: not a recorded run: none of its lines is an Esper event "
                f"({len(replay.problems)} unreadable; first: {first})"
            )
        raise ReportError(f"{where}: holds no events to report (an empty record)")
    by_run: dict[str, list[TelemetryEvent]] = {}
    for e in replay.events:
        by_run.setdefault(e.run_id or "", []).append(e)
    # Files' counts mean one run's events only when the record holds one run.
    files = {str(f): n for f, n in replay.file_counts.items() if n} if len(by_run) == 1 else {}
    runs = []
    for index, (_run_id, events) in enumerate(by_run.items()):
        view = build_run(index, events, files=files,
                         problems=[str(p) for p in replay.problems])  # fmt: skip
        view.markers = locate_spans(events, view.markers)
        runs.append(view)
    return Report(runs, len(replay.events), replay.problems, replay.files,
                  {r.run_id: by_run[k] for r, k in zip(runs, by_run, strict=True)})  # fmt: skip


def write_report(text: str, out: Path) -> int:
    """Write the page to ``out`` whole: into a temporary file beside it, then renamed over it,
    so a reader never sees half a report and a failed write leaves no file. Returns bytes."""
    data = text.encode("utf-8")
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(data)
