"""``esper offline``: record heuristic episodes, train IQL on them, compare controllers.

esper offline record --seeds 1 2 3 4 --use-telemetry --out runs/offline.pt
esper offline train --data runs/offline.pt --steps 3000 --out runs/iql.pt
esper offline compare --model runs/iql.pt --seeds 101 102 103 --telemetry-dir runs
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from esper.leyline import BackendConfigError, UsageError
from esper.nissa.backends import BackendSpec
from esper.runs.config import new_run_id
from esper.runs.session import EXIT_FAILURE, EXIT_OK, RunSession
from esper.scripts import _argtypes as at
from esper.scripts._preflight import check_not_an_input, check_output_dir, check_output_file
from esper.simic.comparison import (
    HeuristicController,
    PolicyController,
    live_comparison,
    load_iql_model,
    record_heuristic_episodes,
)
from esper.simic.episodes import load_dataset
from esper.simic.iql import IQL


def _record(args: argparse.Namespace) -> int:
    check_output_file("--out", args.out)
    data = record_heuristic_episodes(seeds=args.seeds, task=args.task, max_epochs=args.max_epochs,
                                     use_telemetry=args.use_telemetry)  # fmt: skip
    data.save(args.out)
    dim = len(data.obs[0]) if data.obs else 0
    print(f"recorded {len(data)} decisions ({dim} features each) from {len(args.seeds)} "
          f"episodes to {args.out}")  # fmt: skip
    return 0


def _train(args: argparse.Namespace) -> int:
    check_not_an_input("--out", args.out, [args.data], what="the dataset --data")
    check_output_file("--out", args.out)
    data = load_dataset(args.data)
    iql = IQL(int(data["obs"].shape[1]))
    losses = iql.train_offline(data, steps=args.steps, seed=args.seed)
    iql.save(args.out)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
    print(
        f"trained IQL on {data['actions'].shape[0]} decisions for {args.steps} steps: "
        f"{summary}; saved to {args.out}"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.telemetry_dir:
        check_output_dir("--telemetry-dir", args.telemetry_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown dimension is the error below, said once
        iql, use_telemetry, telemetry_type = load_iql_model(args.model)
    if telemetry_type == "unknown":
        raise UsageError(
            f"--model {args.model}: the model reads {iql.state_dim} features; Esper's feature "
            "sets have 27 (no telemetry), 37 (seed telemetry) or 54 (legacy)"
        )
    print(f"{args.model}: {iql.state_dim} features (seed telemetry: {telemetry_type})")
    session = RunSession(
        BackendSpec(telemetry_dir=args.telemetry_dir), run_id=new_run_id("offline-compare")
    )
    code = EXIT_FAILURE
    try:
        live_comparison(
            [HeuristicController(), PolicyController(iql.act)], seeds=args.seeds,
            task=args.task, max_epochs=args.max_epochs, use_telemetry=use_telemetry,
            telemetry_type=telemetry_type, emit=session.hub.emit,
        )  # fmt: skip
        code = EXIT_OK
    finally:
        session.close(interrupted=code != EXIT_OK)
        summary = session.summary()
        print(summary.text)
    return summary.exit_status(code)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``esper offline``."""
    p = argparse.ArgumentParser(prog="esper offline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record heuristic episodes into a dataset")
    r.add_argument("--seeds", type=at.int_range(0), nargs="+", default=[1, 2, 3, 4])
    r.add_argument("--task", choices=("digits",), default="digits")
    r.add_argument("--max-epochs", type=at.int_range(2), default=30)
    r.add_argument("--use-telemetry", action="store_true", help="append seed telemetry (37)")
    r.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="train IQL on a recorded dataset and save it")
    t.add_argument("--data", type=at.existing_file, required=True)
    t.add_argument("--steps", type=at.int_range(1), default=3000)
    t.add_argument("--seed", type=at.int_range(0, at.SEED_MAX), default=0)
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="heuristic against a trained IQL model, same seeds")
    c.add_argument("--model", type=at.existing_file, required=True)
    c.add_argument("--seeds", type=at.int_range(0), nargs="+", default=[101, 102, 103])
    c.add_argument("--task", choices=("digits",), default="digits")
    c.add_argument("--max-epochs", type=at.int_range(2), default=30)
    c.add_argument("--telemetry-dir", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        return {"record": _record, "train": _train, "compare": _compare}[args.command](args)
    except (UsageError, BackendConfigError) as exc:
        print(f"esper offline: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"esper offline: error: {exc}", file=sys.stderr)
        return 1
