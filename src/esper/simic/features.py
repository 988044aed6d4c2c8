"""The 27 base features of a TrainingSnapshot (offline controllers' observation)."""

from __future__ import annotations

from esper.leyline import SeedStage
from esper.simic.episodes import SlotView, TrainingSnapshot
from esper.simic.observation import clip_finite

BASE_FEATURE_DIM = 27
_GROUPS = (
    (SeedStage.DORMANT,),
    (SeedStage.GERMINATED, SeedStage.TRAINING),
    (SeedStage.BLENDING,),
    (SeedStage.PROBATIONARY,),
    (SeedStage.FOSSILIZED,),
)


def obs_to_base_features(snapshot: TrainingSnapshot) -> list[float]:
    """9 run features, then 6 per slot (stage group one-hot of 5, and alpha) for 3 slots."""
    s = snapshot
    out = [
        s.epoch / max(s.max_epochs, 1),
        s.val_accuracy / 100.0,
        s.train_accuracy / 100.0,
        clip_finite(s.val_loss, 0.0, 5.0) / 5.0,
        clip_finite(s.train_loss, 0.0, 5.0) / 5.0,
        clip_finite(s.accuracy_delta / 10.0, -1.0, 1.0),
        1.0 if s.plateau else 0.0,
        s.best_accuracy / 100.0,
        clip_finite(s.param_ratio, 0.0, 2.0),
    ]
    slots = list(s.slots)[:3]
    slots += [SlotView() for _ in range(3 - len(slots))]
    for slot in slots:
        out += [1.0 if slot.stage in group else 0.0 for group in _GROUPS]
        out.append(float(slot.alpha))
    assert len(out) == BASE_FEATURE_DIM
    return out
