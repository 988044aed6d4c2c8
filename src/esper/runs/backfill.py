"""A record's metrics as TSDB blocks, with the rules evaluated over its past: the work behind
``esper telemetry backfill`` and ``esper report --alerts``, callable from any command or test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from esper.leyline import TelemetryEvent, UsageError
from esper.nissa.prometheus import tsdb
from esper.nissa.prometheus.backfill import BackfilledRun, backfill_runs, write_openmetrics
from esper.nissa.prometheus.catalogue import MetricDetail

SHIPPED_RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
"""The shipped rule files, in a checkout of the repository."""

Fired = dict[str, list[tsdb.AlertActivity]]
"""run id -> every alert its past raised (pending or firing)."""


def rule_files(rules: Path | None) -> tuple[Path, Path]:
    """(alerts.yml, recording.yml) in ``rules`` (``--rules``) or the shipped ones; a
    UsageError naming ``--rules`` when one is missing."""
    where = rules if rules is not None else SHIPPED_RULES
    files = (where / "alerts.yml", where / "recording.yml")
    for f in files:
        if not f.is_file():
            hint = "" if rules is not None else " (not a checkout of the repository?)"
            raise UsageError(
                f"--rules {where}: no {f.name} there{hint}; give the directory that holds "
                "alerts.yml and recording.yml (deploy/prometheus in the repository)"
            )
    return files


def write_blocks(
    runs: Sequence[BackfilledRun],
    out: Path,
    alerts_file: Path,
    recording_file: Path,
    *,
    openmetrics: Path | None = None,
) -> tuple[int, Fired]:
    """The runs' blocks in ``out``, then the rules over the past, against a Prometheus serving
    the new blocks: the recording rules (the quantile panels read them) and the alert rules,
    whose ALERTS series are backfilled too, as Prometheus would have written them live.
    ``openmetrics``: keep the samples' text there. Returns (samples written, alerts per run)."""
    with tempfile.TemporaryDirectory(prefix="esper-backfill-") as tmp:
        om = openmetrics if openmetrics is not None else Path(tmp) / "samples.om"
        with om.open("w", encoding="utf-8") as fh:
            samples = write_openmetrics(runs, fh)
        out.mkdir(parents=True, exist_ok=True)
        tsdb.create_blocks(om, out)
    fired: Fired = {}
    with tsdb.scratch_prometheus(out, [alerts_file, recording_file]) as prom:
        for run in runs:
            start, end = run.start_ms / 1000, run.end_ms / 1000
            tsdb.backfill_recording_rules(prom, recording_file, out, start, end)
            fired[run.run_id] = tsdb.evaluate_alerts(prom, start, end)
    activities = [a for alerts in fired.values() for a in alerts]
    if activities:
        with tempfile.TemporaryDirectory(prefix="esper-backfill-") as tmp:
            alerts_om = Path(tmp) / "alerts.om"
            samples += tsdb.write_alerts_openmetrics(activities, alerts_om)
            tsdb.create_blocks(alerts_om, out)
    return samples, fired


def write_blocks_whole(
    runs: Sequence[BackfilledRun],
    out: Path,
    alerts_file: Path,
    recording_file: Path,
    *,
    openmetrics: Path | None = None,
    out_existed: bool,
) -> tuple[int, Fired]:
    """``write_blocks``, whole or not at all: ``out`` was new or empty, so whatever is in it
    when the work fails (a tool's error, a full disk, Ctrl-C) is this backfill's, and half of
    one would pass for a whole. It is removed (and ``out`` itself when this made it: not
    ``out_existed``) before the error goes on."""
    try:
        return write_blocks(runs, out, alerts_file, recording_file, openmetrics=openmetrics)
    except BaseException:
        for child in out.iterdir() if out_existed else [out]:
            shutil.rmtree(child, ignore_errors=True)
        raise


def ending_after(runs: Sequence[BackfilledRun], now_s: float) -> list[BackfilledRun]:
    """The runs that, placed where they are (``--align-start``), would end after ``now_s``:
    Prometheus refuses samples from the future."""
    return [r for r in runs if r.end_ms / 1000 > now_s]


def alerts_over(
    events: Sequence[TelemetryEvent], alerts_file: Path, recording_file: Path
) -> tuple[list[BackfilledRun], Fired]:
    """Which alerts the rules would have raised over a record's runs, evaluated in scratch
    blocks that are removed afterwards (needs promtool and prometheus on PATH)."""
    tsdb.tool("promtool")
    tsdb.tool("prometheus")
    runs = backfill_runs(list(events), detail=MetricDetail.ENV)
    with tempfile.TemporaryDirectory(prefix="esper-alerts-") as tmp:
        _samples, fired = write_blocks(runs, Path(tmp) / "blocks", alerts_file, recording_file)
    return runs, fired
