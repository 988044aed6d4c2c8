"""The 27 base features of a TrainingSnapshot (offline controllers' observation), plan 003.

In the snapshot's field order: 11 run scalars, the last 5 validation losses, the last 5
validation accuracies, then 6 about the focus seed and the free slots. Each is scaled to about
[0, 1] (deltas to [-1, 1]) by a fixed constant, so a model trained on one run length reads
another's snapshots the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from esper.kasmina import SLOT_IDS
from esper.leyline import SeedStage, SeedTelemetry
from esper.simic.episodes import HISTORY_LEN, TrainingSnapshot
from esper.simic.observation import clip_finite

BASE_FEATURE_DIM = 27
SEED_FEATURE_DIM = SeedTelemetry.feature_dim()
TELEMETRY_STATE_DIM = BASE_FEATURE_DIM + SEED_FEATURE_DIM
"""27 base + 10 seed telemetry: the feature set of plan 003 ("seed")."""
LEGACY_FULL_STATE_DIM = 54
"""27 base + 27 run-wide telemetry features: an earlier feature set ("full"). The 27 were never
available during a live episode; such a model is fed zeros in their place, as it always was."""

EPOCH_SCALE = 50.0
STEP_SCALE = 10_000.0
LOSS_SCALE = 5.0
PLATEAU_SCALE = 10.0
STAGE_EPOCH_SCALE = 50.0
_MAX_STAGE = float(max(SeedStage))


def _loss(x: float) -> float:
    """0..1; a NaN or infinite loss is the worst value, 1."""
    return 1.0 if not math.isfinite(x) else clip_finite(x, 0.0, LOSS_SCALE) / LOSS_SCALE


def _delta(x: float, scale: float) -> float:
    """-1..1; a NaN or infinite change reads as no change, 0."""
    return 0.0 if not math.isfinite(x) else clip_finite(x / scale, -1.0, 1.0)


def obs_to_base_features(obs: Mapping[str, Any] | TrainingSnapshot) -> list[float]:
    """The 27 base features of a snapshot (or of a dict with the snapshot's field names)."""
    o: Mapping[str, Any] = (
        {f.name: getattr(obs, f.name) for f in dataclasses.fields(obs)}
        if isinstance(obs, TrainingSnapshot)
        else obs
    )
    losses = list(o["loss_history_5"])[:HISTORY_LEN]
    accs = list(o["accuracy_history_5"])[:HISTORY_LEN]
    if len(losses) != HISTORY_LEN or len(accs) != HISTORY_LEN:
        raise ValueError(f"loss_history_5 and accuracy_history_5 need {HISTORY_LEN} values")
    out = [
        min(o["epoch"] / EPOCH_SCALE, 2.0),
        min(o["global_step"] / STEP_SCALE, 1.0),
        _loss(o["train_loss"]),
        _loss(o["val_loss"]),
        _delta(o["loss_delta"], 1.0),
        o["train_accuracy"] / 100.0,
        o["val_accuracy"] / 100.0,
        _delta(o["accuracy_delta"], 10.0),
        min(o["plateau_epochs"], PLATEAU_SCALE) / PLATEAU_SCALE,
        o["best_val_accuracy"] / 100.0,
        _loss(o["best_val_loss"]),
        *(_loss(x) for x in losses),
        *(a / 100.0 for a in accs),
        1.0 if o["has_active_seed"] else 0.0,
        o["seed_stage"] / _MAX_STAGE,
        min(o["seed_epochs_in_stage"], STAGE_EPOCH_SCALE) / STAGE_EPOCH_SCALE,
        float(o["seed_alpha"]),
        _delta(o["seed_improvement"], 10.0),
        o["available_slots"] / len(SLOT_IDS),
    ]
    assert len(out) == BASE_FEATURE_DIM
    return [float(x) for x in out]
