"""Episodes for offline learning: the controller's view at each decision, and recording it.

A ``TrainingSnapshot`` is what a controller sees of one env after an epoch. Recording runs the
heuristic controller on real envs and stores (observation, action, reward, next observation,
done) for every decision in a file that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper.kasmina import SLOT_IDS, SeedState
from esper.leyline import Op, SeedTelemetry, TelemetryConfig, TelemetryLevel
from esper.tolaria.environment import EpochResult, MorphogeneticEnv

HISTORY_LEN = 5
"""Epochs of validation loss and accuracy a snapshot carries."""


@dataclass(slots=True)
class TrainingSnapshot:
    """One env after one epoch, as an offline controller sees it (validation values unless
    named ``train_``; accuracies in percent). The seed fields describe the env's focus seed
    (its most recently germinated live seed; zeros when there is none)."""

    epoch: int
    global_step: int
    """Optimizer steps the host has taken this episode."""
    train_loss: float
    val_loss: float
    loss_delta: float
    """Validation loss minus the previous epoch's (negative is improving; 0 at epoch 1)."""
    train_accuracy: float
    val_accuracy: float
    accuracy_delta: float
    """Validation accuracy minus the previous epoch's (0 at epoch 1)."""
    plateau_epochs: int
    """Epochs since the best validation accuracy last improved."""
    best_val_accuracy: float
    best_val_loss: float
    loss_history_5: tuple[float, ...]
    """The last 5 validation losses, oldest first (the first repeated before there are 5)."""
    accuracy_history_5: tuple[float, ...]
    has_active_seed: bool
    seed_stage: int
    """The focus seed's ``SeedStage`` value (0 without one)."""
    seed_epochs_in_stage: int
    seed_alpha: float
    seed_improvement: float
    """The focus seed's accuracy change since germination (points)."""
    available_slots: int
    """Dormant slots, where a seed could be germinated now."""


def focus_state(env: MorphogeneticEnv) -> SeedState | None:
    """The env's most recently germinated live seed, if any."""
    live = [s.state for s in env.slots if s.has_live_seed and s.state is not None]
    return live[-1] if live else None


def focus_telemetry(env: MorphogeneticEnv) -> SeedTelemetry | None:
    """The telemetry of the env's focus seed (see ``focus_state``), if any."""
    state = focus_state(env)
    return None if state is None else state.telemetry


def _last(values: Sequence[float]) -> tuple[float, ...]:
    recent = list(values[-HISTORY_LEN:])
    return tuple([recent[0]] * (HISTORY_LEN - len(recent)) + recent)


def snapshot_of(
    env: MorphogeneticEnv, results: Sequence[EpochResult], *, plateau_epochs: int
) -> TrainingSnapshot:
    """The snapshot after the last of ``results`` (this episode's epochs so far, in order)."""
    r = results[-1]
    prev = results[-2] if len(results) > 1 else r
    val_losses = [x.val_loss for x in results]
    accuracies = [x.val_accuracy for x in results]
    finite_losses = [x for x in val_losses if math.isfinite(x)]
    focus = focus_state(env)
    return TrainingSnapshot(
        epoch=r.inner_epoch,
        global_step=env.global_step,
        train_loss=r.train_loss,
        val_loss=r.val_loss,
        loss_delta=r.val_loss - prev.val_loss,
        train_accuracy=r.train_accuracy,
        val_accuracy=r.val_accuracy,
        accuracy_delta=r.val_accuracy - prev.val_accuracy,
        plateau_epochs=plateau_epochs,
        best_val_accuracy=max(accuracies),
        best_val_loss=min(finite_losses) if finite_losses else math.inf,
        loss_history_5=_last(val_losses),
        accuracy_history_5=_last(accuracies),
        has_active_seed=focus is not None,
        seed_stage=0 if focus is None else focus.stage.value,
        seed_epochs_in_stage=0 if focus is None else focus.epochs_in_stage,
        seed_alpha=0.0 if focus is None else focus.alpha,
        seed_improvement=0.0 if focus is None else focus.metrics.accuracy_delta,
        available_slots=sum(1 for s in env.slots if s.is_dormant),
    )


N_ACTIONS = len(Op) * len(SLOT_IDS)
"""Offline actions are (op, slot) pairs; blueprints are chosen round robin, as the heuristic
does."""


def action_index(op: Op, slot_id: str) -> int:
    return int(op) * len(SLOT_IDS) + SLOT_IDS.index(slot_id)


def action_of(index: int) -> tuple[Op, str]:
    return Op(index // len(SLOT_IDS)), SLOT_IDS[index % len(SLOT_IDS)]


@dataclass(slots=True)
class OfflineDataset:
    obs: list[list[float]] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    next_obs: list[list[float]] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actions)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": "esper-offline-v1",
                "obs": torch.tensor(self.obs, dtype=torch.float32),
                "actions": torch.tensor(self.actions, dtype=torch.long),
                "rewards": torch.tensor(self.rewards, dtype=torch.float32),
                "next_obs": torch.tensor(self.next_obs, dtype=torch.float32),
                "dones": torch.tensor(self.dones, dtype=torch.float32),
            },
            path,
        )


def load_dataset(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(
            f"{path}: not an esper offline dataset (cannot load it: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != "esper-offline-v1":
        raise ValueError(f"{path}: not an esper offline dataset")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in ("obs", "actions", "rewards", "next_obs", "dones") if k not in tensors]
    if missing:
        raise ValueError(f"{path}: the dataset has no {', '.join(missing)}")
    obs = tensors["obs"]
    if obs.numel() == 0:
        raise ValueError(
            f"{path}: the dataset holds no decisions (record more or longer episodes: esper "
            "offline record --seeds ... --max-epochs ...)"
        )
    rows = {k: int(v.shape[0]) if v.dim() else -1 for k, v in tensors.items()}
    if obs.dim() != 2 or tensors["next_obs"].shape != obs.shape or len(set(rows.values())) != 1:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
        raise ValueError(f"{path}: the dataset's tensors do not fit together ({shapes})")
    return tensors


TELEMETRY_OFF = TelemetryConfig(TelemetryLevel.OFF)
