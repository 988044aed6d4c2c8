"""Every observation a controller sees, as named feature sets (``FEATURE_SETS``).

- ``ppo``: the PPO policy's, from an env after an epoch (``observe``): 10 run features, then
  per slot a stage-group one-hot of 6 and the seed's 10 ``SeedTelemetry`` features.
- ``none``: plan 003's 27 base features of a ``TrainingSnapshot`` (``obs_to_base_features``), in
  the snapshot's field order: 11 run scalars, the last 5 validation losses, the last 5
  validation accuracies, then 6 about the focus seed and the free slots.
- ``seed``: the 27, then the focus seed's 10 telemetry features (37).
- ``full``: the 27, then 27 run-wide features an earlier build's models read (54; zeros live).

Each feature is scaled to about [0, 1] (deltas to [-1, 1]) by a fixed constant, and is never
NaN or infinite.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esper.kasmina import SLOT_IDS
from esper.leyline import SeedStage, SeedTelemetry
from esper.simic.episodes import HISTORY_LEN, TrainingSnapshot
from esper.tolaria.environment import EpochResult, MorphogeneticEnv


def clip_finite(x: float, lo: float, hi: float) -> float:
    """``x`` clamped to [lo, hi]; a NaN or infinity becomes ``lo`` (a feature never is one)."""
    return lo if not math.isfinite(x) else max(lo, min(hi, x))


# -- ppo ---------------------------------------------------------------------------------------

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


# -- none, seed, full ----------------------------------------------------------------------------

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


def snapshot_features(
    snapshot: TrainingSnapshot, feature_set: str, seed_telemetry: SeedTelemetry | None = None
) -> list[float]:
    """A snapshot as feature set ``none``, ``seed`` or ``full``. ``seed`` without telemetry
    appends zeros and warns: a model trained with telemetry then sees "no information"
    rather than a fabricated seed."""
    base = obs_to_base_features(snapshot)
    if feature_set == "none":
        return base
    if feature_set == "full":
        # The legacy run-wide features were never available live: zeros, as they always were.
        return base + [0.0] * (LEGACY_FULL_STATE_DIM - BASE_FEATURE_DIM)
    if feature_set != "seed":
        raise ValueError(f"no snapshot feature set {feature_set!r} (none, seed or full)")
    if seed_telemetry is None:
        warnings.warn(
            "use_telemetry=True but no seed_telemetry given: appending 10 zeros",
            UserWarning,
            stacklevel=3,
        )
        return base + [0.0] * SEED_FEATURE_DIM
    return base + seed_telemetry.to_features()


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """A named observation: its size and what it holds."""

    name: str
    dim: int
    meaning: str


FEATURE_SETS: dict[str, FeatureSet] = {
    fs.name: fs
    for fs in (
        FeatureSet("ppo", state_dim(len(SLOT_IDS)), "the PPO policy's view of an env"),
        FeatureSet("none", BASE_FEATURE_DIM, "a TrainingSnapshot's 27 base features"),
        FeatureSet("seed", TELEMETRY_STATE_DIM, "the 27, then the focus seed's telemetry"),
        FeatureSet("full", LEGACY_FULL_STATE_DIM, "the 27, then 27 zeros (an earlier build)"),
    )
}
"""Every observation a controller can be trained on, by name."""
