"""``esper train {ppo,heuristic}``: parse and validate flags into a training request, print.

Bad flag values exit with status 2 and a message naming the flag. The run itself, from joining
the ranks to the exit status, is ``esper.runs.launch``; this module parses, prints, and brings
the Sanctum terminal UI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from esper.karn.sanctum import SanctumAggregator
from esper.karn.sanctum.app import SanctumApp
from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import RankInfo, TelemetryConfig, TelemetryLevel, UsageError
from esper.nissa import NissaHub
from esper.nissa.backends import BackendSpec
from esper.nissa.prometheus.budget import estimate_series
from esper.nissa.prometheus.catalogue import MetricDetail
from esper.nissa.record.replay import same_file
from esper.runs import distributed
from esper.runs.checkpoints import load_checkpoint_file, resume_differences
from esper.runs.config import RunConfig
from esper.runs.launch import TrainRequest, launch
from esper.runs.lifecycle import RunResult
from esper.scripts import _argtypes as at
from esper.scripts._preflight import check_not_an_input, check_output_dir, check_output_file
from esper.scripts._progress import ProgressBar
from esper.simic.escalation import DEFAULT_ESCALATE_EPOCHS
from esper.tolaria.environment import Fault

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
    g.add_argument("--seed", type=at.int_range(0, at.SEED_MAX), default=42,
                   help=f"random seed, 0..{at.SEED_MAX}")  # fmt: skip
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
        "--collective-timeout",
        type=at.float_range(10.0, 86400.0),
        default=distributed.DEFAULT_COLLECTIVE_TIMEOUT,
        help="under torchrun: seconds a rank waits for the others in one collective before the "
        "run fails (a rank that waits a quarter of it, or a minute, names the ranks it waits for)",
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
        help=f"inject a fault at EPOCH of each episode's first env (slow-rank: the run's last "
        f"env, on the last rank, takes 4x as long from EPOCH on); KIND is one of "
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
        "--escalate-epochs",
        type=at.int_range(0, 1000),
        default=DEFAULT_ESCALATE_EPOCHS,
        help="when something goes wrong in an env (a gradient anomaly, a rollback, a seed culled "
        "for a regression), record that env at debug level for this many epochs; a policy "
        "anomaly raises every env (0: never; nothing escalates at level off or debug)",
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
    t.add_argument(
        "--metrics-detail",
        choices=[d.value for d in MetricDetail],
        default=MetricDetail.ENV.value,
        help="env: /metrics serves every per-env series (default); rank: folds them over this "
        "rank's envs (sums, or mean/min/max), so series do not grow with the envs, for big "
        "jobs (the JSONL keeps every env)",
    )
    t.add_argument("--otlp-endpoint", type=at.http_url, help="OTLP/HTTP endpoint for traces")
    t.add_argument("--sanctum", action="store_true", help="show the Sanctum terminal dashboard")
    t.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write report.html (the run's picture, one offline HTML file) into the run "
        "directory at the end (written by default with --telemetry-dir)",
    )
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


def has_terminal() -> bool:
    """Whether this process reads keys from, and draws on, a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


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
        args.metrics_detail != MetricDetail.ENV.value,
    )
    if args.metrics_port is None and any(metrics_only):
        parser.error(
            "--metrics-sd-dir, --metrics-sd-host, --metrics-tls-*, --metrics-linger and "
            "--metrics-detail need --metrics-port"
        )
    _check_ranks(parser, args)
    if args.sanctum and not has_terminal():
        parser.error(
            "argument --sanctum: needs a terminal (input or output is redirected, and the "
            "full-screen view would wait for a key forever); drop --sanctum, and watch the "
            "run with esper sanctum RUN_DIR in a terminal"
        )
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
        metrics_detail=MetricDetail(args.metrics_detail),
        rank=ranks,
        run_dir_name=run_dir_name,
        series_estimate=estimate_series(
            envs=args.n_envs // (ranks.world_size if ranks is not None else 1),
            slots=len(SLOT_IDS),
            blueprints=len(BLUEPRINT_IDS),
            multi_rank=ranks is not None and ranks.distributed,
            gpus=1 if (args.device or "cpu").startswith("cuda") else 0,
            detail=MetricDetail(args.metrics_detail),
        ),
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """The training configuration the flags describe (``esper.runs.launch`` sets the device
    and place in the job of each rank)."""
    return RunConfig(
        mode=args.mode,
        task=args.task,
        data_dir=args.data_dir,
        device=args.device or "cpu",
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
        escalate_epochs=args.escalate_epochs,
        threads=args.threads,
    )


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


def preflight(args: argparse.Namespace) -> None:
    """Check every output path the run will need, and the checkpoint it resumes, before any
    work starts (UsageError): a bad --resume leaves no empty run directory behind."""
    if args.resume is not None:
        checkpoint = load_checkpoint_file(args.resume)
        differs = resume_differences(checkpoint, run_config(args))
        if differs:
            print(f"esper train: note: --resume {args.resume}: this run differs from the one "
                  f"that saved it ({', '.join(differs)}); the policy is resumed, and the record "
                  "says so (CHECKPOINT_LOADED differs)", file=sys.stderr)  # fmt: skip
    if args.save is not None:
        # Never over what the run reads (the checkpoint it resumes) or writes as it goes (its
        # JSONL record): torch.save at the end would replace it.
        resumed = [p for p in (args.resume,) if p is not None]
        check_not_an_input("--save", args.save, resumed, what="the checkpoint --resume")
        if args.telemetry_file is not None and same_file(args.save, args.telemetry_file):
            raise UsageError(f"--save {args.save}: is the --telemetry-file too (the checkpoint "
                             "would replace the run's record); give each its own path")  # fmt: skip
        check_output_file("--save", args.save)
    if args.telemetry_file is not None:
        check_output_file("--telemetry-file", args.telemetry_file)
    if args.telemetry_dir is not None:
        check_output_dir("--telemetry-dir", args.telemetry_dir)
    if args.metrics_sd_dir is not None:
        check_output_dir("--metrics-sd-dir", args.metrics_sd_dir)


class SanctumUI:
    """The Sanctum terminal dashboard beside a training run (``--sanctum``)."""

    def __init__(self) -> None:
        self.aggregator = SanctumAggregator()

    def attach(self, hub: NissaHub) -> None:
        hub.add_backend(self.aggregator)

    def run(self, stop: Callable[[str], None]) -> BaseException | None:
        app = SanctumApp(self.aggregator.get_snapshot, on_interrupt=stop)
        app.run()
        return app.interrupted_by


def request(args: argparse.Namespace) -> TrainRequest:
    """The training request the parsed flags describe."""

    def spec(run_id: str, ranks: RankInfo, run_dir: str | None) -> BackendSpec:
        return backend_spec(args, run_id, ranks, run_dir)

    return TrainRequest(
        config=run_config(args),
        spec=spec,
        device=args.device,
        collective_timeout=args.collective_timeout,
        telemetry_dir=args.telemetry_dir,
        preflight=lambda: preflight(args),
        linger_seconds=args.metrics_linger,
        baseline=args.baseline,
        ui=SanctumUI() if args.sanctum else None,
        progress=lambda: ProgressBar("training"),
        report=print_training_summary,
        write_report=args.report,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``esper train``; the exit status is ``esper.runs.launch``'s (0 done and every event
    kept; 1 failed; 2 bad usage; 3 telemetry lost; 130 / 143 interrupted)."""
    return launch(request(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
