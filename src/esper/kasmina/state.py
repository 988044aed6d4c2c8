"""SeedState and SeedMetrics: what a slot knows about its seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from esper.leyline import BlendMode, SeedStage, SeedTelemetry


@dataclass(slots=True)
class SeedMetrics:
    """Accuracy and epoch bookkeeping of one seed (accuracies in percent).

    ``record_accuracy`` is called once per epoch the seed trains; each stage change calls
    ``reset_stage_baseline``, so ``improvement_since_stage_start`` is the progress made in the
    current stage and ``accuracy_delta`` the progress since germination.
    """

    epochs_total: int = 0
    """Epochs the seed has been alive (germinated to fossilized or culled)."""
    epochs_in_current_stage: int = 0
    accuracy_at_germination: float = 0.0
    accuracy_at_stage_start: float | None = None
    """Validation accuracy when the current stage began; None until the first record."""
    accuracy_at_blend_start: float | None = None
    current_val_accuracy: float = 0.0
    best_val_accuracy: float = 0.0
    counterfactual_contribution: float | None = None
    """Last measured (real - alpha=0) validation accuracy, when measured."""

    def record_accuracy(self, accuracy: float) -> None:
        """One more epoch of the seed's life, ending at validation ``accuracy``."""
        if self.accuracy_at_stage_start is None:
            self.accuracy_at_stage_start = accuracy
        self.current_val_accuracy = accuracy
        self.best_val_accuracy = max(self.best_val_accuracy, accuracy)
        self.epochs_total += 1
        self.epochs_in_current_stage += 1

    def reset_stage_baseline(self) -> None:
        """A new stage begins now: its epoch count restarts and its baseline is today's."""
        self.epochs_in_current_stage = 0
        self.accuracy_at_stage_start = self.current_val_accuracy

    @property
    def improvement_since_stage_start(self) -> float:
        """Change in validation accuracy since the current stage began (points)."""
        start = self.accuracy_at_stage_start
        return 0.0 if start is None else self.current_val_accuracy - start

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
    """The life of one seed. A slot makes one when it germinates a seed (``slot_id`` says
    which slot; empty for a seed not placed in a host)."""

    seed_id: str
    blueprint_id: str
    slot_id: str = ""
    blend_mode: BlendMode = BlendMode.LINEAR
    stage: SeedStage = SeedStage.DORMANT
    alpha: float = 0.0
    params: int = 0
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    telemetry: SeedTelemetry = field(init=False)

    def __post_init__(self) -> None:
        self.telemetry = SeedTelemetry(
            seed_id=self.seed_id, blueprint_id=self.blueprint_id, layer_id=self.slot_id
        )

    @property
    def epochs_in_stage(self) -> int:
        """Epochs in the current stage (``metrics.epochs_in_current_stage``)."""
        return self.metrics.epochs_in_current_stage

    @epochs_in_stage.setter
    def epochs_in_stage(self, value: int) -> None:
        self.metrics.epochs_in_current_stage = value

    @property
    def epochs_total(self) -> int:
        """Epochs the seed has been alive (``metrics.epochs_total``)."""
        return self.metrics.epochs_total

    def sync_telemetry(  # noqa: PLR0917 - positional signature is part of the contract
        self,
        gradient_norm: float,
        gradient_health: float,
        has_vanishing: bool,
        has_exploding: bool,
        epoch: int = 0,
        max_epochs: int = 25,
        *,
        total_norm: float | None = None,
    ) -> SeedTelemetry:
        """Refresh ``telemetry`` from gradient stats and this state; call once per epoch after
        validation (``metrics`` stays the source of truth for accuracy and epochs)."""
        t = self.telemetry
        t.gradient_norm = gradient_norm
        if total_norm is not None:
            t.gradient_total_norm = total_norm
        t.gradient_health = gradient_health
        t.has_vanishing = has_vanishing
        t.has_exploding = has_exploding
        t.accuracy = self.metrics.current_val_accuracy
        t.accuracy_delta = self.metrics.improvement_since_stage_start
        t.epochs_in_stage = self.metrics.epochs_in_current_stage
        t.stage = self.stage.value
        t.alpha = self.alpha
        t.epoch = epoch
        t.max_epochs = max_epochs
        t.captured_at = datetime.now(UTC)
        return t
