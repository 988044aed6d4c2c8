"""What an env's episode is made of, apart from the env that runs it: the faults a run injects,
an env's settings, one epoch's result, what every controller's driver needs of a run, and the
aggregate EPOCH_COMPLETED over a process's envs."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esper.kasmina import LifecycleConfig
from esper.leyline import TelemetryConfig, TelemetryEvent, TelemetryEventType, emit_event

ET = TelemetryEventType


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault injected at ``epoch`` (1-based inner epoch) of env 0 of every episode (a
    ``slow-rank`` fault: of the run's last env, from that epoch on)."""

    kind: str
    epoch: int


@dataclass(slots=True)
class EnvConfig:
    batch_size: int = 64
    host_lr: float = 0.05
    momentum: float = 0.9
    clip_norm: float = 10.0
    widths: tuple[int, int, int] | None = None
    """Host channels per block; None picks the task's default (HOST_WIDTHS)."""
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    vanishing_threshold: float = 1e-7
    exploding_threshold: float = 100.0
    counterfactual: str = "every_epoch"
    """every_epoch: measure blended seeds' alpha=0 baseline each epoch; final_epoch: only on
    the episode's last epoch (others report available=false, reason missing_baseline)."""


@dataclass(slots=True)
class EpochResult:
    """What one env's epoch measured (host values)."""

    inner_epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_gradients: dict[str, Any]
    seed_gradients: dict[str, dict[str, Any]]
    counterfactuals: dict[str, float | None]
    rollback_reason: str | None
    step_seconds: float
    dataloader_wait_seconds: float
    samples: int


def emit_aggregate_epoch(
    emit: Callable[[TelemetryEvent], None],
    results: list[EpochResult],
    batch: int,
    plateau: bool,
    *,
    epoch_seconds: float,
) -> None:
    """EPOCH_COMPLETED with scope=aggregate: means over this process's envs of the batch, and
    the wall time it took to run their epoch (``epoch_seconds``: in a multi-rank run the
    rank's epoch time, which shows a straggler)."""

    def mean(attr: str) -> float:
        return statistics.fmean(getattr(r, attr) for r in results)

    emit_event(
        emit,
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
            "epoch_seconds": epoch_seconds,
        },
        message=f"batch {batch} epoch {results[0].inner_epoch}: val {mean('val_accuracy'):.2f}%",
        epoch=results[0].inner_epoch,
    )


def never_stop() -> None:
    """The stop check of a run that nothing stops."""


@dataclass(slots=True)
class EpisodeSettings:
    """What any controller's driver needs of a run (the run lifecycle fills it in)."""

    episodes: int
    """Episodes requested."""
    max_epochs: int
    param_budget: int = 60_000
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    check_stop: Callable[[], None] = never_stop
    """Raises to stop the run; drivers call it before every epoch."""
