"""Leyline holds the shared contracts: events, stages, actions, the payload catalogue, budgets."""

from esper.leyline._actions import ACTION_HEADS, BlendMode, Op
from esper.leyline._budgets import DEFAULT_BUDGETS, PerformanceBudgets
from esper.leyline._catalogue import (
    CATALOGUE,
    CATALOGUE_SPECS,
    DISCRIMINATORS,
    REWARD_COMPONENTS,
    SEED_FIELDS,
    SEED_SUMMARY_FIELDS,
    FieldSpec,
    FieldType,
    PayloadSpec,
    example_payload,
    make_event,
    spec_for,
    validate_payload,
)
from esper.leyline._docs import render_events_markdown
from esper.leyline._errors import (
    BackendConfigError,
    BackendError,
    CorruptLineError,
    EsperError,
    PayloadError,
    ReplayError,
    RunInterrupted,
    TelemetryError,
    UsageError,
)
from esper.leyline._events import (
    LIFECYCLE_EVENT_TYPES,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    new_event_id,
)
from esper.leyline._seed_telemetry import SeedTelemetry
from esper.leyline._stages import (
    VALID_TRANSITIONS,
    SeedStage,
    is_active_stage,
    is_failure_stage,
    is_terminal_stage,
    is_valid_transition,
)
from esper.leyline._telemetry_config import TelemetryConfig

__all__ = [
    "ACTION_HEADS",
    "CATALOGUE",
    "CATALOGUE_SPECS",
    "DEFAULT_BUDGETS",
    "DISCRIMINATORS",
    "LIFECYCLE_EVENT_TYPES",
    "REWARD_COMPONENTS",
    "SEED_FIELDS",
    "SEED_SUMMARY_FIELDS",
    "VALID_TRANSITIONS",
    "BackendConfigError",
    "BackendError",
    "BlendMode",
    "CorruptLineError",
    "EsperError",
    "FieldSpec",
    "FieldType",
    "Op",
    "PayloadError",
    "PayloadSpec",
    "PerformanceBudgets",
    "ReplayError",
    "RunInterrupted",
    "SeedStage",
    "SeedTelemetry",
    "Severity",
    "TelemetryConfig",
    "TelemetryError",
    "TelemetryEvent",
    "TelemetryEventType",
    "TelemetryLevel",
    "UsageError",
    "example_payload",
    "is_active_stage",
    "is_failure_stage",
    "is_terminal_stage",
    "is_valid_transition",
    "make_event",
    "new_event_id",
    "render_events_markdown",
    "spec_for",
    "validate_payload",
]
