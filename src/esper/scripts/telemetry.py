"""``esper telemetry``: summarise a recorded run, replay it into backends, or backfill its
metrics into Prometheus TSDB blocks."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from esper.leyline import (
    BackendConfigError,
    ReplayError,
    TelemetryEvent,
    TelemetryEventType,
    UsageError,
)
from esper.nissa import NissaHub, iter_events, read_events
from esper.nissa.backends import BackendSpec
from esper.nissa.prometheus import tsdb
from esper.nissa.prometheus.backfill import BackfilledRun, backfill_runs
from esper.nissa.prometheus.catalogue import MetricDetail
from esper.nissa.record.replay import LineProblem, RunTracker, resolve_events_files
from esper.nissa.record.verdicts import account_lines, anomaly_report
from esper.runs.backfill import ending_after, rule_files, write_blocks_whole
from esper.runs.session import EXIT_FAILURE, EXIT_OK, RunSession
from esper.scripts import _argtypes as at
from esper.scripts._preflight import check_not_an_input, check_output_dir, check_output_file

_PATH_HELP = (
    "events.jsonl, a run directory, or its parent; several for a multi-rank run's nodes "
    "(their ranks are merged)"
)


def _where(paths: list[Path]) -> str:
    """The paths a command was given, for its messages."""
    return " ".join(str(p) for p in paths)


_MARKERS = {
    "completed": "",
    "unknown": "",
    "partial": "  <-- the record lacks a rank: give every node's run directory",
    "mixed": "  <-- the record mixes runs: each run's status is its own",
}
"""What summarize adds to a status line (any other state: the run did not complete)."""


def _summarize(args: argparse.Namespace) -> int:
    replay = read_events(args.path, strict=args.strict)
    events = replay.events
    where = _where(args.path)
    print(f"{replay.path if len(replay.files) == 1 else where}: {len(events)} events")
    if len(replay.files) > 1:
        for file, n in replay.file_counts.items():
            print(f"  file {file if len(args.path) > 1 else file.name}: {n} events")
    for r in replay.ranks:
        node = "" if r.started is None else f" on {r.started.data.get('node')}"
        end = "" if r.events == 0 else f", last at {r.last}"
        print(f"  rank {r.rank}{node}: {r.events} events, {r.state}{end}")
    status = replay.status
    marker = _MARKERS.get(status.state, "  <-- the run did not complete")
    print(f"  status: {status}{marker}")
    if events:
        first, last = events[0], events[-1]
        span = (last.timestamp_ns - first.timestamp_ns) / 1e9
        print(f"  run_id: {', '.join(sorted({str(e.run_id) for e in events}))}")
        print(
            f"  from {first.timestamp.isoformat()} to {last.timestamp.isoformat()} ({span:.1f} s)"
        )
    counts = Counter(e.event_type.name for e in events)
    for name, n in sorted(counts.items()):
        print(f"  {name:<26} {n}")
    kinds = Counter(
        e.data.get("kind") for e in events if e.event_type is TelemetryEventType.ANALYTICS_SNAPSHOT
    )
    for kind, n in sorted(kinds.items(), key=lambda kv: str(kv[0])):
        print(f"    ANALYTICS_SNAPSHOT kind={kind:<20} {n}")
    for line in account_lines(events):
        print(f"  {line}")
    report = anomaly_report(events)
    if report:
        print("  what went wrong, when, and where the record holds its detail:")
        print("\n".join(f"    {line}" for line in report))
    print(f"  see it: esper report {where}  (one HTML file with every curve; opens offline)")
    for problem in replay.problems:
        print(f"  warning: {problem}", file=sys.stderr)
    if not status.finished and status.state != "unknown":
        print(f"warning: {where}: {status.detail}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    # The inputs are found before any output exists: a new run directory under an input's
    # parent is then never read back, and an output that is an input is refused.
    files = resolve_events_files(args.path)
    if args.telemetry_file is not None:
        check_not_an_input("--telemetry-file", args.telemetry_file, files)
        check_output_file("--telemetry-file", args.telemetry_file)
    if args.telemetry_dir is not None:
        check_output_dir("--telemetry-dir", args.telemetry_dir)
    problems: list[LineProblem] = []
    source: Iterable[tuple[TelemetryEvent, int]]
    if args.strict:
        # Read (and so check) the whole input before any output exists: a corrupt line
        # then leaves nothing half-written behind.
        replay = read_events(files, strict=True)
        source = zip(replay.events, replay.seqs, strict=True)
        problems = replay.problems
    else:
        source = iter_events(files, problems=problems)
    session = RunSession(
        BackendSpec(
            telemetry_file=args.telemetry_file,
            telemetry_dir=args.telemetry_dir,
            otlp_endpoint=args.otlp_endpoint,
            otlp_recorded=True,
        ),
        hub=NissaHub(),
    )
    n = 0
    runs = RunTracker()  # how the run ended, without keeping a streamed run in memory
    code = EXIT_FAILURE
    try:
        for event, _seq in source:
            session.emit_recorded(event)
            n += 1
            runs.observe(event)
        code = EXIT_OK
    finally:
        session.close(interrupted=code != EXIT_OK)
    status = runs.status()
    where = _where(args.path)
    print(f"replayed {n} events; the recorded run's status: {status}")
    if not status.finished and status.state != "unknown":
        print(f"warning: {where}: {status.detail}", file=sys.stderr)
    for problem in problems:
        print(f"  warning: {problem}", file=sys.stderr)
    summary = session.summary()
    print(summary.text)
    return summary.exit_status(code)


STACK_RETENTION = "15d"
"""``--storage.tsdb.retention.time`` of the shipped stack's Prometheus (docker-compose.yml)."""


def _check_empty_out(out: Path) -> None:
    if out.exists() and out.is_dir() and any(out.iterdir()):
        raise UsageError(
            f"--out {out}: is not empty; backfill writes its blocks into a new or empty "
            "directory (move the blocks of an earlier backfill into Prometheus's data "
            "directory, or choose another --out)"
        )
    check_output_dir("--out", out)


def _when(seconds: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int(seconds * 1000) % 1000:03d}Z"
    )


def _size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _backfill(args: argparse.Namespace) -> int:
    # Everything that can be checked is checked before any work starts.
    tsdb.tool("promtool")
    tsdb.tool("prometheus")
    alerts_file, recording_file = rule_files(args.rules)
    inputs = resolve_events_files(args.path)
    existed = args.out.exists()  # before the probe below creates it
    # Refusals first, then the probes (the --out probe creates the directory).
    check_not_an_input("--out", args.out, inputs, directory=True)
    if args.openmetrics is not None:
        check_not_an_input("--openmetrics", args.openmetrics, inputs)
        check_output_file("--openmetrics", args.openmetrics)
    _check_empty_out(args.out)
    replay = read_events(args.path, strict=args.strict)
    where = _where(args.path)
    if not replay.events:
        raise UsageError(f"{where}: holds no events to backfill")
    align_ns = None if args.align_start is None else int(args.align_start * 1e9)
    runs = backfill_runs(
        replay.events, align_start_ns=align_ns, detail=MetricDetail(args.metrics_detail)
    )
    if align_ns is not None:
        late = ending_after(runs, time.time())
        if late:
            raise UsageError(
                f"--align-start {_when(args.align_start)}: run {late[0].run_id} would end in "
                f"the future (it lasts {(late[0].last_ns - late[0].first_ns) / 1e9:.0f} s); "
                "choose an earlier instant"
            )
    try:
        samples, fired = write_blocks_whole(
            runs, args.out, alerts_file, recording_file,
            openmetrics=args.openmetrics, out_existed=existed,
        )  # fmt: skip
    except BaseException:
        print(f"esper telemetry: backfill did not finish; removed the partial {args.out}",
              file=sys.stderr)  # fmt: skip
        raise
    _report_backfill(args, runs, samples, fired)
    for problem in replay.problems:
        print(f"  warning: {problem}", file=sys.stderr)
    return EXIT_OK


def _report_backfill(
    args: argparse.Namespace,
    runs: list[BackfilledRun],
    samples: int,
    fired: dict[str, list[tsdb.AlertActivity]],
) -> None:
    for run in runs:
        ranks = [r for r in run.ranks if r is not None]
        who = f"ranks {', '.join(map(str, ranks))}" if ranks else "one process"
        start, end = run.start_ms / 1000 + 0.001, run.end_ms / 1000
        print(f"run {run.run_id} ({who}): {run.events} events, {len(run.samples)} series, "
              f"{_when(start)} to {_when(end)} ({end - start:.1f} s)")  # fmt: skip
        print(f"  status: {run.status}")
        if run.shift_ns:
            print(f"  placed at --align-start (moved {run.shift_ns / 1e9:+.0f} s; its real "
                  f"start is in the label recorded_start)")  # fmt: skip
        if not run.status.finished and run.status.state != "unknown":
            print(f"warning: run {run.run_id} did not finish: its series stop at its last "
                  "event", file=sys.stderr)  # fmt: skip
        age = time.time() - end
        if age > args.retention:
            print(
                f"warning: run {run.run_id} ended {age / 86400:.1f} days ago, longer than "
                f"the retention of {args.retention / 86400:g} days: a Prometheus started with "
                f"--storage.tsdb.retention.time={args.retention_text} deletes these blocks at "
                "its next compaction; backfill with --align-start, or raise the retention",
                file=sys.stderr,
            )
    blocks = tsdb.blocks(args.out)
    print(f"{samples} samples in {len(blocks)} blocks in {args.out} "
          f"({_size(args.out) / 1024:.0f} KiB), with the recording rules and ALERTS")  # fmt: skip
    if args.openmetrics is not None:
        print(f"OpenMetrics text: {args.openmetrics}")
    print(f"serve them: prometheus --storage.tsdb.path={args.out}, or see docs/AFTERWARDS.md "
          "('Look at a recorded run in Grafana')")  # fmt: skip
    if not args.alerts:
        return
    print("alerts the shipped rules would have fired:")
    for run in runs:
        alerts = [a for a in fired.get(run.run_id, []) if a.fired_at]
        if not alerts:
            print(f"  run {run.run_id}: none")
        for a in alerts:
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(a.labels.items())
                               if k not in ("job", "run_id", "mode", "task"))  # fmt: skip
            for when in a.fired_at:
                offset = when - (run.start_ms / 1000 + 0.001)
                print(f"  run {run.run_id}: {a.name} at {_when(when)} (+{offset:.1f} s) "
                      f"{{{labels}}}")  # fmt: skip
        pending = sorted({a.name for a in fired.get(run.run_id, []) if not a.fired_at})
        if pending:
            print(f"  run {run.run_id}: pending but never firing (the run ended inside their "
                  f"for:): {', '.join(pending)}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper telemetry``."""
    p = argparse.ArgumentParser(prog="esper telemetry", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="count a run's events by type; say how it ended")
    s.add_argument("path", type=Path, nargs="+", help=_PATH_HELP)
    s.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    r = sub.add_parser("replay", help="send a recorded run's events into backends")
    r.add_argument("path", type=Path, nargs="+", help=_PATH_HELP)
    r.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt line or non-standard JSON token (writing nothing)",
    )
    r.add_argument("--telemetry-file", type=Path, help="append the events to this JSONL file")
    r.add_argument("--telemetry-dir", type=Path, help="write them to a new run directory here")
    r.add_argument(
        "--otlp-endpoint",
        type=at.http_url,
        help="send the run's spans, with their recorded times and ids, to this OTLP/HTTP "
        "endpoint (the same trace as the live export)",
    )
    b = sub.add_parser(
        "backfill",
        help="write a recorded run's metrics (and recording rules) as Prometheus TSDB blocks",
        description="Replay each run's events through the live exporter's mapping and write "
        "a sample at every event that changed a series, as TSDB blocks a Prometheus serves.",
    )
    b.add_argument("path", type=Path, nargs="+", help=_PATH_HELP + "; several runs each")
    b.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    b.add_argument("--openmetrics", type=Path, help="also keep the samples as OpenMetrics text")
    b.add_argument(
        "--alerts", action="store_true", help="list the alerts the shipped rules would have fired"
    )
    b.add_argument(
        "--align-start",
        type=at.instant,
        metavar="TIME",
        help="place each run's first event at TIME (RFC 3339 or Unix seconds, from "
        "2000-01-01T00:00:00Z to now, and the run must end before now), to overlay runs "
        "recorded apart; the real start is kept in the label recorded_start",
    )
    b.add_argument(
        "--metrics-detail",
        choices=[d.value for d in MetricDetail],
        default=MetricDetail.ENV.value,
        help="env: every per-env series (default: the record keeps them); rank: folded over "
        "each rank's envs, as esper train --metrics-detail rank serves them",
    )
    b.add_argument(
        "--rules",
        type=Path,
        help="directory with alerts.yml and recording.yml (default: deploy/prometheus)",
    )
    b.add_argument(
        "--retention",
        default=STACK_RETENTION,
        help="the target Prometheus's --storage.tsdb.retention.time, to warn about runs it "
        f"would delete (default {STACK_RETENTION}, the shipped stack's)",
    )
    b.add_argument("--strict", action="store_true", help="fail on the first corrupt line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.command == "replay" and not (
        args.telemetry_file or args.telemetry_dir or args.otlp_endpoint
    ):
        p.error("replay needs --telemetry-file, --telemetry-dir or --otlp-endpoint")
    if args.command == "backfill":
        try:
            args.retention_text = args.retention
            args.retention = at.prometheus_duration(args.retention)
        except argparse.ArgumentTypeError as exc:
            p.error(f"argument --retention: {exc}")
    commands = {"summarize": _summarize, "replay": _replay, "backfill": _backfill}
    try:
        return int(commands[args.command](args))
    except (UsageError, BackendConfigError) as exc:
        print(f"esper telemetry: error: {exc}", file=sys.stderr)
        return 2
    except (ReplayError, tsdb.ToolError) as exc:
        print(f"esper telemetry: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"esper telemetry {args.command}: interrupted", file=sys.stderr)
        return 130
