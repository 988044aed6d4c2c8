"""``esper report`` and the report ``esper train`` leaves in its run directory: read the
record, evaluate the shipped alerts over it when asked, and write the page.

The output is never one of the inputs: writing over a recording would destroy it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from esper.karn.report import Band, Report, RunView, build_report, write_report
from esper.leyline import UsageError
from esper.nissa.prometheus import tsdb
from esper.nissa.record.replay import LineProblem, Paths, resolve_events_files, same_file
from esper.runs.backfill import alerts_over, rule_files

REPORT_FILE = "report.html"


@dataclass(slots=True)
class ReportResult:
    path: Path
    bytes: int
    seconds: float
    runs: list[str]
    states: list[str]
    events: int
    problems: list[LineProblem] = field(default_factory=list)
    alerts: int | None = None
    """Alerts that would have fired (None: not evaluated)."""


def default_output(paths: list[Path]) -> Path:
    """``report.html`` in the run directory given (or the directory of the file given), or in
    the current directory when several paths are given."""
    if len(paths) == 1:
        p = paths[0]
        files = resolve_events_files(p)
        return files[0].parent / REPORT_FILE if p.is_dir() else p.parent / REPORT_FILE
    return Path(REPORT_FILE)


def check_output(out: Path, paths: list[Path]) -> None:
    """UsageError when ``out`` is, or would replace, one of the record's files."""
    if out.is_dir():
        raise UsageError(f"-o {out}: is a directory, expected a file path")
    for f in resolve_events_files(paths):
        if same_file(out, f):
            raise UsageError(f"-o {out}: is the record {f} (it would be overwritten); "
                             "write the report elsewhere")  # fmt: skip
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {out}: no directory {parent}")


def alert_bands(report: Report, rules: tuple[Path, Path]) -> tuple[list[Band], str]:
    """The shipped alerts that would have fired over each run, as bands (firing from its
    first firing evaluation to its last)."""
    alerts_file, recording_file = rules
    bands: list[Band] = []
    for view in report.runs:
        events = report.run_events[view.run_id]
        runs, fired = alerts_over(events, alerts_file, recording_file)
        start_s = events[0].timestamp_ns / 1e9
        for activity in fired.get(runs[0].run_id, []) if runs else []:
            firing = [t for t, state in activity.states if state == "firing"]
            if not firing:
                continue
            where = ", ".join(f"{k}={v}" for k, v in sorted(activity.labels.items())
                              if k in ("env_id", "rank", "kind", "scope", "severity"))  # fmt: skip
            t0, t1 = firing[0] - start_s, firing[-1] - start_s
            p0, p1 = _progress_at(view, t0), _progress_at(view, t1)
            label = f"{activity.name}" + (f" ({where})" if where else "")
            bands.append(Band(view.index, "alert", label, t0, max(t1, t0), p0, max(p1, p0)))
    step = "evaluated every second as Prometheus's rule manager would have, over the record"
    return bands, f"The rules in {alerts_file.parent}, {step}."


def _progress_at(view: RunView, t: float) -> float:
    """The training progress at ``t`` seconds into the run: that of the last point before."""
    best = 0.0
    for s in view.series:
        for ti, pi in zip(s.t, s.p, strict=True):
            if ti <= t:
                best = max(best, pi)
    return best


def make_report(
    paths: Paths,
    out: Path | None = None,
    *,
    strict: bool = False,
    alerts: bool = False,
    rules: Path | None = None,
) -> ReportResult:
    """Write the report of the runs recorded at ``paths`` (see ``build_report``)."""
    started = time.perf_counter()
    each = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    target = out if out is not None else default_output(each)
    check_output(target, each)
    if alerts:
        files = rule_files(rules)  # the shipped rules unless given; checked before any work
        tsdb.tool("promtool")
        tsdb.tool("prometheus")
    report = build_report(each, strict=strict)
    bands: list[Band] | None = None
    note = ""
    if alerts:
        bands, note = alert_bands(report, files)
    size = write_report(report.html(alerts=bands, alerts_note=note), target)
    return ReportResult(
        path=target,
        bytes=size,
        seconds=time.perf_counter() - started,
        runs=[r.run_id for r in report.runs],
        states=[r.status.state for r in report.runs],
        events=report.events,
        problems=report.problems,
        alerts=None if bands is None else len(bands),
    )
