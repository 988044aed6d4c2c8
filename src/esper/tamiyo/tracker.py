"""SignalTracker: follows an env's validation accuracy and notices plateaus."""

from __future__ import annotations

from collections.abc import Callable

from esper.leyline import TelemetryEvent, TelemetryEventType, emit_event


class SignalTracker:
    """A plateau is ``patience`` epochs without beating the best accuracy by ``min_delta``
    points. PLATEAU_DETECTED is emitted once when a plateau begins (through ``emit``)."""

    def __init__(
        self,
        env_id: int,
        *,
        patience: int = 3,
        min_delta: float = 0.3,
        emit: Callable[[TelemetryEvent], None] | None = None,
    ) -> None:
        self.env_id = env_id
        self.patience = patience
        self.min_delta = min_delta
        self.emit = emit
        self.reset()

    def reset(self) -> None:
        self.best = float("-inf")
        self.epochs_without_improvement = 0
        self.plateau = False
        self.history: list[float] = []

    def update(self, val_accuracy: float, inner_epoch: int) -> bool:
        """Record an epoch's accuracy; True while on a plateau."""
        self.history.append(val_accuracy)
        if val_accuracy > self.best + self.min_delta:
            self.best = val_accuracy
            self.epochs_without_improvement = 0
            self.plateau = False
            return False
        self.epochs_without_improvement += 1
        onset = not self.plateau and self.epochs_without_improvement >= self.patience
        self.plateau = self.epochs_without_improvement >= self.patience
        if onset and self.emit is not None:
            emit_event(
                self.emit,
                TelemetryEventType.PLATEAU_DETECTED,
                {
                    "env_id": self.env_id,
                    "inner_epoch": inner_epoch,
                    "best_accuracy": self.best,
                    "epochs_without_improvement": self.epochs_without_improvement,
                },
                message=f"env {self.env_id}: plateau at {self.best:.2f}%",
                epoch=inner_epoch,
            )
        return self.plateau
