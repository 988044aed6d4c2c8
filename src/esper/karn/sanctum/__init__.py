"""Sanctum folds telemetry events into a snapshot that a terminal dashboard draws."""

from esper.karn.sanctum.aggregator import SanctumAggregator, resolve
from esper.karn.sanctum.capture import CAPTURE
from esper.karn.sanctum.schema import (
    DecisionSnapshot,
    EnvState,
    EventLogEntry,
    RunConfig,
    SanctumSnapshot,
    SeedState,
    TamiyoState,
)

__all__ = [
    "CAPTURE",
    "DecisionSnapshot",
    "EnvState",
    "EventLogEntry",
    "RunConfig",
    "SanctumAggregator",
    "SanctumSnapshot",
    "SeedState",
    "TamiyoState",
    "resolve",
]
