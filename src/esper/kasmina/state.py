"""SeedState and SeedMetrics: what a slot knows about its seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from esper.leyline import BlendMode, SeedStage, SeedTelemetry


@dataclass(slots=True)
class SeedMetrics:
    """Accuracy bookkeeping of one seed (percent)."""

    accuracy_at_germination: float = 0.0
    accuracy_at_blend_start: float | None = None
    current_val_accuracy: float = 0.0
    best_val_accuracy: float = 0.0
    counterfactual_contribution: float | None = None
    """Last measured (real - alpha=0) validation accuracy, when measured."""

    @property
    def accuracy_delta(self) -> float:
        """Change in validation accuracy since germination (points)."""
        return self.current_val_accuracy - self.accuracy_at_germination

    @property
    def blending_delta(self) -> float:
        """Change in validation accuracy since blending began (0 before)."""
        if self.accuracy_at_blend_start is None:
            return 0.0
        return self.current_val_accuracy - self.accuracy_at_blend_start


@dataclass(slots=True)
class SeedState:
    """The life of one seed in one slot."""

    seed_id: str
    blueprint_id: str
    slot_id: str
    blend_mode: BlendMode = BlendMode.LINEAR
    stage: SeedStage = SeedStage.GERMINATED
    epochs_in_stage: int = 0
    epochs_total: int = 0
    alpha: float = 0.0
    params: int = 0
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    telemetry: SeedTelemetry = field(init=False)

    def __post_init__(self) -> None:
        self.telemetry = SeedTelemetry(
            seed_id=self.seed_id, blueprint_id=self.blueprint_id, layer_id=self.slot_id
        )

    def sync_telemetry(  # noqa: PLR0917 - positional signature is part of the contract
        self,
        gradient_norm: float,
        gradient_health: float,
        has_vanishing: bool,
        has_exploding: bool,
        epoch: int = 0,
        max_epochs: int = 25,
    ) -> SeedTelemetry:
        """Refresh ``telemetry`` from gradient stats and this state; call after validation."""
        t = self.telemetry
        t.gradient_norm = gradient_norm
        t.gradient_health = gradient_health
        t.has_vanishing = has_vanishing
        t.has_exploding = has_exploding
        t.accuracy = self.metrics.current_val_accuracy
        t.accuracy_delta = self.metrics.accuracy_delta
        t.epochs_in_stage = self.epochs_in_stage
        t.stage = int(self.stage)
        t.alpha = self.alpha
        t.epoch = epoch
        t.max_epochs = max_epochs
        t.captured_at = datetime.now(UTC)
        return t
