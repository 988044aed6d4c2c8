"""SeedTelemetry: one seed's local picture, as the controller's features see it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

_FEATURE_DIM = 10


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SeedTelemetry:
    """Per-seed gradient health and progress; ``to_features`` turns it into 10 floats."""

    seed_id: str
    blueprint_id: str = ""
    layer_id: str = ""
    gradient_norm: float = 0.0
    gradient_health: float = 1.0
    has_vanishing: bool = False
    has_exploding: bool = False
    accuracy: float = 0.0
    """Validation accuracy in percent."""
    accuracy_delta: float = 0.0
    epochs_in_stage: int = 0
    stage: int = 1
    alpha: float = 0.0
    epoch: int = 0
    max_epochs: int = 25
    captured_at: datetime = field(default_factory=_utc_now)
    gradient_total_norm: float = 0.0
    """The raw L2 norm of all the seed's gradients (``gradient_norm`` is it divided by the
    number of gradient tensors). Reported, not a feature."""

    def to_features(self) -> list[float]:
        """The 10 normalised features, in the order of SPEC 3.5.

        The gradient norm saturates at 10 (a NaN reads as saturated); the raw values stay in
        ``gradient_norm`` and ``gradient_total_norm`` (and in metrics and events) so a
        saturated input is visible.
        """
        norm = self.gradient_norm
        return [
            min(norm, 10.0) / 10.0 if not math.isnan(norm) else 1.0,
            float(self.gradient_health),
            1.0 if self.has_vanishing else 0.0,
            1.0 if self.has_exploding else 0.0,
            min(self.epochs_in_stage, 50) / 50.0,
            self.accuracy / 100.0,
            max(-1.0, min(1.0, self.accuracy_delta / 10.0)),
            max(0.0, min(1.0, (self.stage - 1) / 6.0)),
            float(self.alpha),
            self.epoch / max(self.max_epochs, 1),
        ]

    @staticmethod
    def feature_dim() -> int:
        """The length of ``to_features()``: 10."""
        return _FEATURE_DIM
