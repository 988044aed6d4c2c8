"""``esper train {ppo,heuristic}``: parse and validate flags, set up telemetry, run, summarise.

Bad flag values exit with status 2 and a message naming the flag; a telemetry destination that
cannot be opened is reported (naming the path) before any training starts.
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from esper.karn.sanctum import SanctumAggregator
from esper.karn.sanctum.app import SanctumApp
from esper.leyline import (
    BackendConfigError,
    RankInfo,
    Severity,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    UsageError,
)
from esper.nissa import (
    NissaHub,
    install_signal_handlers,
    start_daemon_thread,
)
from esper.nissa.backends import (
    BackendSpec,
    TelemetrySetup,
    attach_backends,
    free_run_dir_name,
)
from esper.runs import distributed, run_host_only, run_training
from esper.runs.config import RunConfig, StopRequest
from esper.runs.distributed import Distributed
from esper.runs.lifecycle import RunResult, describe_stop, stop_signal
from esper.runs.session import RunSession
from esper.scripts import _argtypes as at
from esper.scripts._preflight import check_output_dir, check_output_file
from esper.scripts._progress import ProgressBar
from esper.tolaria.environment import Fault

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TELEMETRY_LOST = 3
"""Training finished, but telemetry a user asked for was lost (named in the summary)."""
EXIT_INTERRUPTED = 130
"""How long delivering and closing the telemetry may take at the end of a run."""

TASKS: tuple[str, ...] = ("digits", "cifar10")
TELEMETRY_LEVELS: tuple[str, ...] = tuple(level.name.lower() for level in TelemetryLevel)


def build_parser(prog: str = "esper train") -> argparse.ArgumentParser:
    """The parser of ``esper train``; every flag validates its value."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a morphogenetic network with a PPO or heuristic controller.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("mode", choices=("ppo", "heuristic"), help="controller that decides")

    g = p.add_argument_group("task and training")
    g.add_argument("--task", choices=TASKS, default="digits", help="task to train on")
    g.add_argument("--data-dir", type=at.existing_dir, help="directory holding cifar-10-batches-py")
    g.add_argument(
        "--device",
        type=at.device,
        default=None,
        help="torch device of the host models (default: cpu); several (cuda:0,cuda:1) spread "
        "the envs round robin, and the policy runs on the first. Under torchrun each rank "
        "takes cuda:LOCAL_RANK when CUDA is there (or --device cpu)",
    )
    g.add_argument("--seed", type=at.int_range(0), default=42, help="random seed")
    g.add_argument(
        "--episodes",
        type=at.int_range(1),
        default=None,
        help="episodes to run (default: 8 for ppo, 1 for heuristic)",
    )
    g.add_argument("--max-epochs", type=at.int_range(1), default=15, help="host epochs per episode")
    g.add_argument(
        "--n-envs",
        type=at.int_range(1, 256),
        default=None,
        help="parallel environments (default: 4 for ppo, 1 for heuristic); under torchrun the "
        "total over all ranks, which must divide evenly",
    )
    g.add_argument(
        "--threads",
        type=at.int_range(1, 1024),
        default=None,
        help="intra-op CPU threads for this process (default: the cores it may use divided "
        "by the processes of this job on this node)",
    )
    g.add_argument(
        "--vectorized",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step all envs in lockstep with one batched policy call (ppo)",
    )
    g.add_argument(
        "--lr",
        type=at.float_range(0.0, 1.0, lo_open=True),
        default=3e-4,
        help="policy learning rate",
    )
    g.add_argument(
        "--clip-ratio",
        type=at.float_range(0.0, 1.0, lo_open=True),
        default=0.2,
        help="PPO clip ratio",
    )
    g.add_argument(
        "--entropy-coef",
        type=at.float_range(0.0, 1.0),
        default=0.05,
        help="initial entropy bonus coefficient",
    )
    g.add_argument(
        "--entropy-anneal",
        type=at.int_range(0),
        default=0,
        help="episodes over which the entropy coefficient anneals (0: off)",
    )
    g.add_argument(
        "--param-budget",
        type=at.int_range(1),
        default=60_000,
        help="parameters seeds may add before compute rent bites",
    )
    g.add_argument("--save", type=Path, help="write a checkpoint here at the end")
    g.add_argument("--resume", type=at.existing_file, help="resume from this checkpoint")
    g.add_argument(
        "--counterfactual",
        choices=("every-epoch", "final-epoch"),
        default="every-epoch",
        help="when to measure blended seeds' alpha=0 baseline (an extra validation pass each)",
    )
    g.add_argument(
        "--baseline",
        action="store_true",
        help="also train the host alone (same seed and data) and compare (heuristic)",
    )
    g.add_argument(
        "--inject-fault",
        type=at.fault,
        action="append",
        default=[],
        metavar="KIND@EPOCH",
        help=f"inject a fault at EPOCH of each episode's first env; KIND is one of "
        f"{', '.join(at.FAULT_KINDS)} (repeatable)",
    )

    t = p.add_argument_group("telemetry")
    t.add_argument("--telemetry-file", type=Path, help="append events as JSONL to this file")
    t.add_argument(
        "--telemetry-dir",
        type=Path,
        help="create a run directory telemetry_YYYY-MM-DD_HHMMSS/ under this one",
    )
    t.add_argument(
        "--telemetry-level", choices=TELEMETRY_LEVELS, default="normal", help="how much to emit"
    )
    t.add_argument(
        "--telemetry-lifecycle-only",
        action="store_true",
        help="keep seed lifecycle events even at --telemetry-level off",
    )
    t.add_argument(
        "--metrics-addr",
        type=at.bind_address,
        default="127.0.0.1",
        help="address /metrics binds to: an IP address, a host name, or a network interface "
        "such as docker0 (its IPv4 address: reachable from the host's containers, not the "
        "network)",
    )
    t.add_argument(
        "--metrics-port",
        type=at.int_range(0, 65535),
        default=None,
        help="serve Prometheus /metrics on this port (0: pick a free one); under torchrun each "
        "rank serves on this port plus its local rank",
    )
    t.add_argument(
        "--metrics-tls-cert", type=at.existing_file, help="serve /metrics over TLS with this cert"
    )
    t.add_argument("--metrics-tls-key", type=at.existing_file, help="private key for the cert")
    t.add_argument(
        "--metrics-tls-client-ca",
        type=at.existing_file,
        help="require client certificates signed by this CA",
    )
    t.add_argument(
        "--metrics-sd-dir",
        type=Path,
        help="write this process's scrape target here for Prometheus file_sd (removed at exit)",
    )
    t.add_argument(
        "--metrics-sd-host",
        type=at.host_address,
        help="host name Prometheus should scrape (default: --metrics-addr, or this host's name "
        "when that is a wildcard)",
    )
    t.add_argument(
        "--metrics-linger",
        type=at.float_range(0.0, 3600.0),
        default=0.0,
        help="after training, keep /metrics up until one more scrape, at most this many seconds",
    )
    t.add_argument("--otlp-endpoint", type=at.http_url, help="OTLP/HTTP endpoint for traces")
    t.add_argument("--sanctum", action="store_true", help="show the Sanctum terminal dashboard")
    return p


def _check_ranks(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What a run under torchrun cannot do, checked before any rank starts."""
    try:
        ranks = RankInfo.from_environment()
    except ValueError as exc:
        parser.error(str(exc))
    if not ranks.distributed:
        return
    if args.mode != "ppo":
        parser.error("heuristic runs are single-process; run ppo under torchrun")
    if args.n_envs % ranks.world_size:
        parser.error(
            f"argument --n-envs: {args.n_envs} envs do not divide over "
            f"{ranks.world_size} ranks (WORLD_SIZE)"
        )
    try:
        distributed.rank_device(ranks, args.device)
    except UsageError as exc:
        parser.error(f"argument {exc}")
    if args.sanctum:
        parser.error(
            "argument --sanctum: not under torchrun (the ranks share one terminal); run "
            "esper sanctum on the run directory"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check flags; exits 2 naming the flag on a bad value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "cifar10" and args.data_dir is None:
        parser.error("--task cifar10 needs --data-dir (a directory holding cifar-10-batches-py)")
    if args.episodes is None:
        args.episodes = 8 if args.mode == "ppo" else 1
    if args.n_envs is None:
        args.n_envs = 4 if args.mode == "ppo" else 1
    if args.mode == "heuristic" and args.resume is not None:
        parser.error("argument --resume: only ppo runs resume (the heuristic has no state)")
    if (args.metrics_tls_cert is None) != (args.metrics_tls_key is None):
        parser.error("argument --metrics-tls-cert: needs --metrics-tls-key as well (and back)")
    metrics_only = (
        args.metrics_sd_dir,
        args.metrics_sd_host,
        args.metrics_tls_cert,
        args.metrics_linger,
    )
    if args.metrics_port is None and any(metrics_only):
        parser.error(
            "--metrics-sd-dir, --metrics-sd-host, --metrics-tls-* and --metrics-linger need "
            "--metrics-port"
        )
    _check_ranks(parser, args)
    if args.mode == "ppo" and args.baseline:
        parser.error("argument --baseline: only for heuristic runs")
    for spec in args.inject_fault:
        if spec.epoch > args.max_epochs:
            parser.error(
                f"argument --inject-fault: epoch {spec.epoch} in {spec} is after "
                f"--max-epochs {args.max_epochs}"
            )
    return args


def telemetry_config(args: argparse.Namespace) -> TelemetryConfig:
    return TelemetryConfig(
        TelemetryLevel[args.telemetry_level.upper()], args.telemetry_lifecycle_only
    )


def backend_spec(
    args: argparse.Namespace,
    run_id: str,
    ranks: RankInfo | None = None,
    run_dir_name: str | None = None,
) -> BackendSpec:
    """The backends the flags ask for (for one rank of a multi-rank run: ``ranks`` and the
    run directory rank 0 chose)."""
    return BackendSpec(
        telemetry_file=args.telemetry_file,
        telemetry_dir=args.telemetry_dir,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        metrics_tls_cert=args.metrics_tls_cert,
        metrics_tls_key=args.metrics_tls_key,
        metrics_tls_client_ca=args.metrics_tls_client_ca,
        metrics_sd_dir=args.metrics_sd_dir,
        metrics_sd_host=args.metrics_sd_host,
        metrics_sd_labels={"run_id": run_id, "mode": args.mode, "task": args.task},
        otlp_endpoint=args.otlp_endpoint,
        otlp_from_environment=True,
        rank=ranks,
        run_dir_name=run_dir_name,
    )


def setup_telemetry(args: argparse.Namespace, hub: NissaHub) -> TelemetrySetup:
    """Attach the backends the flags ask for (through the one backend factory) and say so
    when telemetry is off. Raises BackendConfigError naming the path."""
    setup = attach_backends(hub, backend_spec(args, hub.run_id or ""))
    warn_if_telemetry_is_off(args, hub)
    return setup


def warn_if_telemetry_is_off(args: argparse.Namespace, hub: NissaHub) -> None:
    """One TELEMETRY_WARNING when the level is off (what is kept, if anything)."""
    config = telemetry_config(args)
    if config.level is TelemetryLevel.OFF:
        detail = "telemetry level is off" + (
            "; seed lifecycle events stay on (--telemetry-lifecycle-only)"
            if config.lifecycle_only
            else ""
        )
        hub.emit(
            TelemetryEvent(
                event_type=TelemetryEventType.TELEMETRY_WARNING,
                message=detail,
                data={"reason": "telemetry_disabled", "detail": detail},
                severity=Severity.WARNING,
            )
        )


def print_summary(
    setup: TelemetrySetup, stream: TextIO | None = None, *, rank: RankInfo | None = None
) -> bool:
    """The closing lines: where telemetry went, events written, dropped and lost, and a
    plain verdict (of one rank's telemetry, in a multi-rank run). Returns True when every
    event was kept by every backend and matched the payload catalogue."""
    stats = setup.hub.stats()
    title = "Telemetry summary"
    if rank is not None and rank.distributed:
        title += f" of rank {rank.rank} of {rank.world_size} (node {rank.node})"
    lines = ["", title]
    lines += [f"  {d}" for d in setup.destinations] or ["  no telemetry destination configured"]
    lines.append(
        f"  events emitted: {stats.emitted}, dropped: {stats.total_dropped}"
        + (f", arrived after close: {stats.late}" if stats.late else "")
        + (f", with no backend attached: {stats.unrouted}" if stats.unrouted else "")
        + f"; telemetry threads used {stats.cpu_seconds:.3f} s of CPU"
    )
    for b in stats.backends:
        extra = "".join(
            f", {label} {n}"
            for label, n in (("lost", b.lost), ("undelivered at close", b.pending))
            if n
        )
        problem = f", last error: {b.last_error}" if b.last_error else ""
        lines.append(
            f"  {b.name}: sent {b.emitted}, delivered {b.delivered}, dropped {b.dropped}, "
            f"failed {b.failed}"
            f"{extra}{problem}"
        )
    complete = stats.complete
    if complete:
        lines.append("  telemetry complete: every event was kept by every backend")
    else:
        lost = [f"{b.name}: {b.not_kept}" for b in stats.backends if b.not_kept]
        if stats.late:
            lost.append(f"after close: {stats.late}")
        lines.append(
            "  TELEMETRY INCOMPLETE: events were lost ("
            + (", ".join(lost) or f"dropped at the hub: {stats.dropped}")
            + f"); exit status {EXIT_TELEMETRY_LOST} unless the run failed otherwise"
        )
    if stats.invalid:
        lines.append(
            f"  PAYLOAD MISMATCH: {stats.invalid} events did not match the payload catalogue "
            f"(exit status {EXIT_TELEMETRY_LOST}); first of each type: "
            + "; ".join(stats.invalid_examples)
        )
    print("\n".join(lines), file=stream or sys.stdout)
    return complete and not stats.invalid


def run_config(args: argparse.Namespace, ranks: Distributed | None = None) -> RunConfig:
    """The training configuration the flags describe (for one rank of ``ranks``: its device
    and place in the job)."""
    return RunConfig(
        mode=args.mode,
        task=args.task,
        data_dir=args.data_dir,
        device=(args.device or "cpu") if ranks is None else ranks.device,
        seed=args.seed,
        episodes=args.episodes,
        max_epochs=args.max_epochs,
        n_envs=args.n_envs,
        vectorized=args.vectorized,
        lr=args.lr,
        clip_ratio=args.clip_ratio,
        entropy_coef=args.entropy_coef,
        entropy_anneal=args.entropy_anneal,
        param_budget=args.param_budget,
        save=args.save,
        resume=args.resume,
        faults=tuple(Fault(f.kind, f.epoch) for f in args.inject_fault),
        telemetry=telemetry_config(args),
        counterfactual=args.counterfactual.replace("-", "_"),
        threads=args.threads,
        ranks=RankInfo() if ranks is None else ranks.info,
    )


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")


def print_training_summary(result: RunResult, baseline: list[float] | None) -> None:
    lines = ["", f"Run {result.run_id}: {result.episodes_completed} episode(s) in "
             f"{result.wall_time_seconds:.1f} s"]  # fmt: skip
    if result.final_accuracy is not None:
        accs = ", ".join(f"{a:.2f}%" for a in result.final_accuracies)
        lines.append(f"  final validation accuracy: {result.final_accuracy:.2f}% (envs: {accs})")
    if baseline:
        mean = sum(baseline) / len(baseline)
        delta = "" if result.final_accuracy is None else f" ({result.final_accuracy - mean:+.2f})"
        lines.append(f"  host-only baseline, same seed: {mean:.2f}%{delta}")
    c = result.run_counts or result.counts
    lines.append(
        f"  seeds: {c['germinated']} germinated, {c['fossilized']} fossilized, {c['culled']} culled"
    )
    if len(result.episode_rewards) > 1:
        first, last = result.episode_rewards[0], result.episode_rewards[-1]
        lines.append(f"  mean episode reward: first batch {first:+.3f}, last batch {last:+.3f}")
    if result.checkpoint:
        lines.append(f"  checkpoint: {result.checkpoint}")
    print("\n".join(lines))


def _train_under_sanctum(config: RunConfig, hub: NissaHub) -> RunResult:
    """Train on a worker thread while the Sanctum UI runs on the main one (Textual needs
    it). Ctrl-C in the UI, or SIGTERM, stops training at the next epoch boundary (the run
    ends ``interrupted``); quitting the UI with q lets training finish, and Ctrl-C or SIGTERM
    then stop it the same way. The process never exits while training still runs."""
    aggregator = SanctumAggregator()
    hub.add_backend(aggregator)
    stop = config.stop = StopRequest()
    outcome: dict[str, Any] = {}
    # An Event, not Thread.join: on Python 3.11 a join interrupted by a signal marks the
    # thread stopped while it still runs, and exiting then aborts inside torch.
    finished = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = run_training(config, hub=hub)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = exc
        finally:
            finished.set()

    # The worker must not take Ctrl-C or SIGTERM: the main thread turns them into `stop`.
    start_daemon_thread(work, "esper-training")
    stopped_by: BaseException | None = None
    app = SanctumApp(aggregator.get_snapshot, on_interrupt=stop.request)
    try:
        try:
            app.run()
        finally:
            install_signal_handlers()  # the app's event loop took SIGTERM while it ran
        if app.interrupted_by is not None:
            stopped_by = app.interrupted_by
        elif not finished.is_set():
            print("Sanctum closed; training continues (Ctrl-C stops it)...", flush=True)
    except (KeyboardInterrupt, SystemExit) as exc:
        stop.request(describe_stop(exc)[1])
        stopped_by = exc
    while not finished.is_set():
        try:
            finished.wait()
        except (KeyboardInterrupt, SystemExit) as exc:
            stop.request(describe_stop(exc)[1])
            stopped_by = stopped_by or exc
            print("stopping at the next epoch boundary...", file=sys.stderr, flush=True)
    if stopped_by is not None:
        raise stopped_by
    if "error" in outcome:
        raise outcome["error"]
    result: RunResult = outcome["result"]
    return result


def _interrupted_code(exc: BaseException) -> int:
    signum = stop_signal(exc)
    return EXIT_INTERRUPTED if signum is None else 128 + signum


def preflight(args: argparse.Namespace) -> None:
    """Check every output path the run will need before any work starts (UsageError)."""
    if args.save is not None:
        check_output_file("--save", args.save)
    if args.telemetry_file is not None:
        check_output_file("--telemetry-file", args.telemetry_file)
    if args.telemetry_dir is not None:
        check_output_dir("--telemetry-dir", args.telemetry_dir)
    if args.metrics_sd_dir is not None:
        check_output_dir("--metrics-sd-dir", args.metrics_sd_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``esper train``. Exit status: 0 done and every event kept; 1 training failed;
    2 bad usage; 3 training done but telemetry lost events (or events broke the payload
    catalogue); 130 / 143 interrupted (Ctrl-C / SIGTERM).

    Under ``torchrun`` every rank runs this: they join one process group, take rank 0's run
    id and run directory name, and start only when every rank could set up (a rank that
    cannot says why; the others exit 2 too rather than wait for it)."""
    args = parse_args(argv)
    try:
        ranks = distributed.start(args.device)
    except UsageError as exc:
        print(f"esper train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _main(args, ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _open_session(
    args: argparse.Namespace, config: RunConfig, ranks: Distributed | None
) -> RunSession | None:
    """Check the flags' paths and devices and open the run's telemetry; None (after saying
    why) when this rank, or under torchrun any rank, cannot."""
    run_dir: str | None = None
    if ranks is not None:
        lead = ranks.info.rank == 0
        mine = free_run_dir_name(args.telemetry_dir) if lead and args.telemetry_dir else None
        config.run_id, run_dir = ranks.agree((config.run_id, mine))
        ranks.join_run(config.run_id)
    error: str | None = None
    session: RunSession | None = None
    try:
        for device in config.devices:
            _check_device(device)
        preflight(args)
        session = RunSession(config, backend_spec(args, config.run_id, config.ranks, run_dir))
    except (UsageError, BackendConfigError) as exc:
        error = str(exc)
        print(f"esper train: error: {exc_prefix(config)}{error}", file=sys.stderr)
    if ranks is not None and not ranks.all_ok(error is None):
        if session is not None:
            print(f"esper train: error: {exc_prefix(config)}another rank could not start "
                  "(its error says why)", file=sys.stderr)  # fmt: skip
            session.close()
        return None
    return session


def _main(args: argparse.Namespace, ranks: Distributed | None) -> int:
    config = run_config(args, ranks)
    session = _open_session(args, config, ranks)
    if session is None:
        return EXIT_USAGE
    hub = session.hub
    warn_if_telemetry_is_off(args, hub)
    lead = config.ranks.rank == 0
    code = EXIT_FAILURE
    try:
        if args.sanctum:
            result = _train_under_sanctum(config, hub)
        else:
            bar = ProgressBar("training") if lead else None
            try:
                result = run_training(config, hub=hub, progress=bar, ranks=ranks)
            finally:
                if bar is not None:
                    bar.close()
        baseline = run_host_only(config) if args.baseline else None
        if lead:
            print_training_summary(result, baseline)
        code = 0
    except UsageError as exc:
        print(f"esper train: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except BaseException as exc:  # noqa: BLE001 - reported and recorded; see _stopped
        code = _stopped(exc, config, ranks)
    finally:
        code = _finish(args, session, code)
    return code


def _stopped(exc: BaseException, config: RunConfig, ranks: Distributed | None) -> int:
    """Say why the run stopped (recorded so by the lifecycle) and choose the exit status:
    a rank that stopped because another rank was lost failed (1), whatever stopped it."""
    who = exc_prefix(config)
    if ranks is not None and ranks.lost:
        _status, why = describe_stop(exc)
        print(f"\nesper train: {who}training failed: lost {ranks.describe(ranks.lost)} "
              f"({why}); the run is recorded as failed", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        _status, why = describe_stop(exc)
        print(f"\nesper train: {who}interrupted ({why}); the run is recorded as interrupted",
              file=sys.stderr)  # fmt: skip
        return _interrupted_code(exc)
    if not isinstance(exc, Exception):
        raise exc
    traceback.print_exc()
    print(f"esper train: {who}training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_FAILURE


def exc_prefix(config: RunConfig) -> str:
    """``rank 1: `` in a multi-rank run (every rank writes to the same terminal)."""
    return f"rank {config.ranks.rank}: " if config.ranks.distributed else ""


def _finish(args: argparse.Namespace, session: RunSession, code: int) -> int:
    """Close the run's telemetry (after a final scrape, see ``RunSession.close``), print the
    summary, and choose the exit status: a run that finished but lost telemetry exits 3."""
    session.close(linger_seconds=args.metrics_linger, interrupted=code >= EXIT_INTERRUPTED)
    complete = print_summary(session.setup, rank=session.ranks)
    if code == 0 and not complete:
        return EXIT_TELEMETRY_LOST
    return code


if __name__ == "__main__":
    sys.exit(main())
