"""The heuristic run: ``n_envs`` envs per episode, each grown by its own HeuristicTamiyo."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from esper.kasmina import SLOT_IDS
from esper.leyline import TelemetryEvent, TelemetryEventType, make_event
from esper.nissa import emit as hub_emit
from esper.tamiyo.heuristic import HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.config import RunConfig
from esper.tolaria.data import load_task
from esper.tolaria.environment import EpochResult, MorphogeneticEnv

ET = TelemetryEventType
Progress = Callable[[int, int, str], None]
"""progress(done, total, status line) — called once per epoch."""


@dataclass(slots=True)
class RunResult:
    run_id: str
    episodes_completed: int = 0
    final_accuracies: list[float] = field(default_factory=list)
    """Validation accuracy of each env at the end of the last episode."""
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("germinated", "fossilized", "culled"), 0)
    )
    wall_time_seconds: float = 0.0
    checkpoint: str | None = None

    @property
    def final_accuracy(self) -> float | None:
        return statistics.fmean(self.final_accuracies) if self.final_accuracies else None


def training_started_payload(
    config: RunConfig, host_params: int, **overrides: object
) -> dict[str, object]:
    """TRAINING_STARTED's payload; PPO passes its policy fields as overrides."""
    devices = [config.device] * config.n_envs
    data: dict[str, object] = {
        "run_id": config.run_id,
        "mode": config.mode,
        "task": config.task,
        "task_type": "classification",
        "topology": "cnn",
        "max_epochs": config.max_epochs,
        "n_envs": config.n_envs,
        "n_episodes": config.episodes,
        "seed": config.seed,
        "policy_device": None,
        "env_devices": devices,
        "env_device_counts": {config.device: config.n_envs},
        "env_device_map_strategy": "single_device",
        "host_params": host_params,
        "slot_ids": list(SLOT_IDS),
        "reward_mode": "none",
        "use_telemetry": False,
        "telemetry_level": config.telemetry.level.name.lower(),
        "state_dim": None,
        "resume_path": None if config.resume is None else str(config.resume),
        "lr": None,
        "clip_ratio": None,
        "entropy_coef": None,
        "entropy_anneal": config.entropy_anneal,
        "gpu_preload": config.device != "cpu",
        "dataloader": "preloaded_tensors",
        "param_budget": config.param_budget,
    }
    data.update(overrides)
    return data


def emit_aggregate_epoch(
    emit: Callable[[TelemetryEvent], None],
    results: list[EpochResult],
    batch: int,
    plateau: bool,
) -> None:
    """EPOCH_COMPLETED with scope=aggregate: means over the batch's envs."""

    def mean(attr: str) -> float:
        return statistics.fmean(getattr(r, attr) for r in results)

    emit(
        make_event(
            ET.EPOCH_COMPLETED,
            {
                "scope": "aggregate",
                "inner_epoch": results[0].inner_epoch,
                "batch": batch,
                "train_loss": mean("train_loss"),
                "train_accuracy": mean("train_accuracy"),
                "val_loss": mean("val_loss"),
                "val_accuracy": mean("val_accuracy"),
                "n_envs": len(results),
                "skipped_update": any(r.rollback_reason is not None for r in results),
                "plateau_detected": plateau,
            },
            message=f"batch {batch} epoch {results[0].inner_epoch}: "
            f"val {mean('val_accuracy'):.2f}%",
            epoch=results[0].inner_epoch,
        )
    )


def save_host_checkpoint(
    config: RunConfig, env: MorphogeneticEnv, episodes: int, emit: Callable[[TelemetryEvent], None]
) -> str:
    assert config.save is not None
    config.save.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "kind": "esper-host",
            "run_id": config.run_id,
            "episodes_completed": episodes,
            "model": env.model.state_dict(),
        },
        config.save,
    )
    emit(
        make_event(
            ET.CHECKPOINT_SAVED,
            {
                "path": str(config.save),
                "episodes_completed": episodes,
                "size_bytes": os.path.getsize(config.save),
            },
            message=f"checkpoint saved to {config.save}",
        )
    )
    return str(config.save)


def run_heuristic(
    config: RunConfig,
    *,
    emit: Callable[[TelemetryEvent], None] = hub_emit,
    progress: Progress | None = None,
) -> RunResult:
    """Train ``config.episodes`` episodes with the heuristic controller, emitting telemetry."""
    start = time.perf_counter()
    tel = config.telemetry
    task = load_task(config.task, config.data_dir).to(config.device)
    envs = [
        MorphogeneticEnv(
            i,
            task,
            device=config.device,
            seed=config.seed,
            telemetry=tel,
            emit=emit,
            faults=config.faults,
        )
        for i in range(config.n_envs)
    ]
    result = RunResult(config.run_id)
    if tel.lifecycle:
        emit(
            make_event(
                ET.TRAINING_STARTED,
                training_started_payload(config, envs[0].model.host_param_count()),
                message=f"heuristic run {config.run_id} on {config.task}",
            )
        )
    status = "failed"
    total = config.episodes * config.max_epochs
    try:
        for episode in range(config.episodes):
            controllers = [HeuristicTamiyo(param_budget=config.param_budget) for _ in envs]
            trackers = [SignalTracker(e.env_id, emit=emit if tel.analytics else None) for e in envs]
            for env in envs:
                env.reset(episode)
            for epoch in range(1, config.max_epochs + 1):
                results = []
                for env, ctl, tracker in zip(envs, controllers, trackers, strict=True):
                    r = env.run_epoch(epoch, episode, config.max_epochs)
                    results.append(r)
                    plateau = tracker.update(r.val_accuracy, epoch)
                    d = ctl.decide(
                        env.slots,
                        plateau=plateau,
                        inner_epoch=epoch,
                        max_epochs=config.max_epochs,
                        seed_params=env.seed_params(),
                    )
                    env.apply(d.op, d.slot_id, d.blueprint_id, d.blend)
                if tel.analytics:
                    emit_aggregate_epoch(emit, results, episode, any(t.plateau for t in trackers))
                if progress is not None:
                    acc = statistics.fmean(r.val_accuracy for r in results)
                    progress(
                        episode * config.max_epochs + epoch,
                        total,
                        f"episode {episode + 1}/{config.episodes} val {acc:.1f}%",
                    )
            result.episodes_completed = episode + 1
            result.final_accuracies = [e.last_val_accuracy for e in envs]
        if config.save is not None:
            result.checkpoint = save_host_checkpoint(
                config, envs[0], result.episodes_completed, emit
            )
        status = "completed"
    except (KeyboardInterrupt, SystemExit):
        status = "interrupted"
        raise
    finally:
        for key in result.counts:
            result.counts[key] = sum(e.counts[key] for e in envs)
        result.wall_time_seconds = time.perf_counter() - start
        if tel.lifecycle:
            emit(
                make_event(
                    ET.TRAINING_COMPLETED,
                    {
                        "status": status,
                        "episodes_completed": result.episodes_completed,
                        "final_accuracy": result.final_accuracy,
                        "wall_time_seconds": result.wall_time_seconds,
                        "seeds_germinated": result.counts["germinated"],
                        "seeds_fossilized": result.counts["fossilized"],
                        "seeds_culled": result.counts["culled"],
                    },
                    message=f"run {config.run_id} {status}",
                )
            )
    return result


def run_host_only(config: RunConfig) -> list[float]:
    """The same envs, seeds and data with no controller and no telemetry: the baseline."""
    task = load_task(config.task, config.data_dir).to(config.device)
    envs = [
        MorphogeneticEnv(i, task, device=config.device, seed=config.seed, fast_mode=True)
        for i in range(config.n_envs)
    ]
    finals = []
    for env in envs:
        env.reset(config.episodes - 1)
        for epoch in range(1, config.max_epochs + 1):
            env.run_epoch(epoch, config.episodes - 1, config.max_epochs)
        finals.append(env.last_val_accuracy)
    return finals
