"""Episodes for offline learning: the controller's view at each decision, and recording it.

A ``TrainingSnapshot`` is what a controller sees of one env after an epoch. Recording runs the
heuristic controller on real envs and stores (observation, action, reward, next observation,
done) for every decision in a file that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper.kasmina import SLOT_IDS
from esper.leyline import Op, SeedStage, SeedTelemetry, TelemetryConfig, TelemetryLevel
from esper.tolaria.environment import EpochResult, MorphogeneticEnv


@dataclass(slots=True)
class SlotView:
    stage: SeedStage = SeedStage.DORMANT
    alpha: float = 0.0


@dataclass(slots=True)
class TrainingSnapshot:
    """One env after one epoch, as an offline controller sees it."""

    epoch: int
    max_epochs: int
    val_accuracy: float
    train_accuracy: float
    val_loss: float
    train_loss: float
    accuracy_delta: float
    plateau: bool
    best_accuracy: float
    param_ratio: float
    slots: list[SlotView] = field(default_factory=list)


def focus_telemetry(env: MorphogeneticEnv) -> SeedTelemetry | None:
    """The telemetry of the env's most recently created live seed, if any."""
    live = [s.state for s in env.slots if s.has_live_seed and s.state is not None]
    return live[-1].telemetry if live else None


def snapshot_of(
    env: MorphogeneticEnv,
    result: EpochResult,
    *,
    previous_accuracy: float,
    best_accuracy: float,
    plateau: bool,
    param_budget: int,
) -> TrainingSnapshot:
    return TrainingSnapshot(
        epoch=result.inner_epoch,
        max_epochs=env.context.max_epochs,
        val_accuracy=result.val_accuracy,
        train_accuracy=result.train_accuracy,
        val_loss=result.val_loss,
        train_loss=result.train_loss,
        accuracy_delta=result.val_accuracy - previous_accuracy,
        plateau=plateau,
        best_accuracy=best_accuracy,
        param_ratio=env.seed_params() / max(param_budget, 1),
        slots=[SlotView(s.stage, 0.0 if s.state is None else s.state.alpha) for s in env.slots],
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
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


TELEMETRY_OFF = TelemetryConfig(TelemetryLevel.OFF)
