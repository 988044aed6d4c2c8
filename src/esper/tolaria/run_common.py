"""What every training run shares: its result record and its start, epoch and end events."""

from __future__ import annotations

import os
import signal
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import Severity, TelemetryEvent, TelemetryEventType, make_event
from esper.tolaria.config import RunConfig
from esper.tolaria.data import load_task
from esper.tolaria.environment import EnvConfig, EpochResult, MorphogeneticEnv

ET = TelemetryEventType

Progress = Callable[[int, int, str], None]
"""progress(done, total, status line): called as training advances (per epoch or batch)."""


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
    episode_rewards: list[float] = field(default_factory=list)
    """Mean episode reward of each batch, in order (PPO)."""

    @property
    def final_accuracy(self) -> float | None:
        return statistics.fmean(self.final_accuracies) if self.final_accuracies else None


def training_started_payload(
    config: RunConfig, host_params: int, **overrides: object
) -> dict[str, object]:
    """TRAINING_STARTED's payload; PPO passes its policy fields as overrides."""
    devices = config.env_devices
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
        "env_device_counts": {d: devices.count(d) for d in dict.fromkeys(devices)},
        "env_device_map_strategy": config.device_map_strategy,
        "host_params": host_params,
        "slot_ids": list(SLOT_IDS),
        "blueprint_ids": list(BLUEPRINT_IDS),
        "reward_mode": "none",
        "use_telemetry": False,
        "telemetry_level": config.telemetry.level.name.lower(),
        "state_dim": None,
        "resume_path": None if config.resume is None else str(config.resume),
        "lr": None,
        "clip_ratio": None,
        "entropy_coef": None,
        "entropy_anneal": {},
        "gpu_preload": any(d != "cpu" for d in devices),
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


def stop_signal(exc: BaseException) -> int | None:
    """The signal behind a ``SystemExit(128 + signum)`` raised by a signal handler, else None."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        return exc.code - 128
    return None


def describe_stop(exc: BaseException) -> tuple[str, str]:
    """(status, error) of a run ended by ``exc``: ``interrupted`` for Ctrl-C, a stop request
    or a signal's SystemExit; ``failed`` with the exception's type and message otherwise."""
    if isinstance(exc, KeyboardInterrupt):
        what = str(exc) or "Ctrl-C"
        return "interrupted", f"{type(exc).__name__}: {what}"
    if isinstance(exc, SystemExit):
        signum = stop_signal(exc)
        if signum is None:
            return "interrupted", f"SystemExit({exc.code!r})"
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return "interrupted", f"{name} (exit status {128 + signum})"
    return "failed", f"{type(exc).__name__}: {exc}"


@contextmanager
def run_completion(
    emit: Callable[[TelemetryEvent], None] | None,
    result: RunResult,
    finish: Callable[[], None],
) -> Iterator[None]:
    """Around a run's body: however it ends, call ``finish`` (final counts) and emit
    TRAINING_COMPLETED with status ``completed``, ``interrupted`` or ``failed`` and the
    reason (unless ``emit`` is None, i.e. lifecycle telemetry is off); the exception, if any,
    goes on."""
    status, error = "failed", None
    try:
        yield
        status = "completed"
    except BaseException as exc:
        status, error = describe_stop(exc)
        raise
    finally:
        finish()
        if emit is not None:
            emit_training_completed(emit, result, status, error)


def emit_training_completed(
    emit: Callable[[TelemetryEvent], None],
    result: RunResult,
    status: str,
    error: str | None = None,
) -> None:
    """TRAINING_COMPLETED: how the run ended and what it did."""
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
                "error": error,
            },
            message=f"run {result.run_id} {status}" + (f": {error}" if error else ""),
            severity=Severity.INFO if status == "completed" else Severity.WARNING,
        )
    )


def save_checkpoint(
    payload: dict[str, Any],
    path: Path,
    *,
    episodes: int,
    emit: Callable[[TelemetryEvent], None] | None,
) -> str:
    """Write ``payload`` with ``torch.save`` atomically (a temp file, then a rename, so a crash
    never leaves a torn checkpoint) and emit CHECKPOINT_SAVED unless ``emit`` is None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if emit is not None:
        emit(
            make_event(
                ET.CHECKPOINT_SAVED,
                {
                    "path": str(path),
                    "episodes_completed": episodes,
                    "size_bytes": os.path.getsize(path),
                },
                message=f"checkpoint saved to {path}",
            )
        )
    return str(path)


def build_envs(
    config: RunConfig,
    *,
    emit: Callable[[TelemetryEvent], None] | None = None,
    fast_mode: bool = False,
) -> list[MorphogeneticEnv]:
    """One env per ``config.n_envs`` on its device (the task is copied once per device)."""
    task = load_task(config.task, config.data_dir)
    on_device = {d: task.to(d) for d in config.devices}
    env_config = EnvConfig(counterfactual=config.counterfactual)
    kwargs: dict[str, Any] = {} if emit is None else {"emit": emit}
    return [
        MorphogeneticEnv(
            i,
            on_device[device],
            device=device,
            seed=config.seed,
            config=env_config,
            telemetry=config.telemetry,
            fast_mode=fast_mode,
            faults=() if fast_mode else config.faults,
            **kwargs,
        )
        for i, device in enumerate(config.env_devices)
    ]
