"""What the PPO policy sees of an env, and which actions are physically possible."""

from __future__ import annotations

import math

import torch

from esper.kasmina import SeedSlot
from esper.leyline import Op, SeedStage, SeedTelemetry
from esper.tolaria.environment import EpochResult, MorphogeneticEnv

BASE_FEATURES = 10
STAGE_GROUPS: tuple[frozenset[SeedStage], ...] = (
    frozenset({SeedStage.DORMANT}),
    frozenset({SeedStage.GERMINATED, SeedStage.TRAINING}),
    frozenset({SeedStage.BLENDING}),
    frozenset({SeedStage.PROBATIONARY}),
    frozenset({SeedStage.FOSSILIZED}),
    frozenset({SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING}),
)
SLOT_FEATURES = len(STAGE_GROUPS) + SeedTelemetry.feature_dim()


def state_dim(n_slots: int) -> int:
    """Observation length: base features plus, per slot, stage one-hot and seed telemetry."""
    return BASE_FEATURES + n_slots * SLOT_FEATURES


def clip_finite(x: float, lo: float, hi: float) -> float:
    """``x`` clamped to [lo, hi]; a NaN or infinity becomes ``lo`` (a feature never is one)."""
    return lo if not math.isfinite(x) else max(lo, min(hi, x))


def observe(
    env: MorphogeneticEnv,
    result: EpochResult,
    *,
    previous_accuracy: float,
    best_accuracy: float,
    plateau: bool,
    param_budget: int,
) -> list[float]:
    """The env's observation after an epoch (host floats, no device work)."""
    features = [
        result.inner_epoch / max(env.context.max_epochs, 1),
        result.val_accuracy / 100.0,
        result.train_accuracy / 100.0,
        clip_finite(result.val_loss, 0.0, 5.0) / 5.0,
        clip_finite(result.train_loss, 0.0, 5.0) / 5.0,
        clip_finite((result.val_accuracy - previous_accuracy) / 10.0, -1.0, 1.0),
        1.0 if plateau else 0.0,
        best_accuracy / 100.0,
        clip_finite(math.log1p(result.host_gradients["gradient_norm"]) / 5.0, 0.0, 1.0),
        clip_finite(env.seed_params() / max(param_budget, 1), 0.0, 2.0),
    ]
    for slot in env.slots:
        features += [1.0 if slot.stage in group else 0.0 for group in STAGE_GROUPS]
        if slot.state is None:
            features += [0.0] * SeedTelemetry.feature_dim()
        else:
            features += [clip_finite(v, -1.0, 10.0) for v in slot.state.telemetry.to_features()]
    return features


def _can(slot: SeedSlot, op: Op) -> bool:
    if op is Op.GERMINATE:
        return slot.is_dormant
    if op is Op.CULL:
        return slot.has_live_seed
    if op is Op.FOSSILIZE:
        return slot.stage is SeedStage.PROBATIONARY
    return True


def action_masks(env: MorphogeneticEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """(op mask (4,), slot masks (4, n_slots)): True where the action is possible."""
    slots = env.slots
    slot_masks = torch.tensor([[_can(s, op) for s in slots] for op in Op], dtype=torch.bool)
    op_mask = slot_masks.any(dim=1)
    # Rows of impossible ops are never sampled; keep them non-empty for a valid distribution.
    slot_masks[~op_mask] = True
    return op_mask, slot_masks
