"""Leyline holds the shared contracts: events, stages, actions, the payload catalogue, budgets."""

from esper.leyline._actions import ACTION_HEADS, BlendMode, FactoredAction, Op
from esper.leyline._budgets import DEFAULT_BUDGETS, PerformanceBudgets
from esper.leyline._catalogue import (
    CATALOGUE,
    CATALOGUE_SPECS,
    REWARD_COMPONENTS,
    SEED_FIELDS,
    SEED_SUMMARY_FIELDS,
    payload_fits,
)
from esper.leyline._docs import render_events_markdown
from esper.leyline._emit import deliver, emit_event, sink_failures
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
    EmitsEvents,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    new_event_id,
)
from esper.leyline._payloads import (
    allowed_values,
    example_payload,
    make_event,
    payload_problem,
    recorded_payload_problem,
    set_strict_payloads,
    spec_for,
    strict_payloads,
    validate_payload,
)
from esper.leyline._ranks import COLLECTIVE_OPS, RankInfo
from esper.leyline._schema import DISCRIMINATORS, FieldSpec, FieldType, PayloadSpec
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
    "COLLECTIVE_OPS",
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
    "EmitsEvents",
    "EsperError",
    "FactoredAction",
    "FieldSpec",
    "FieldType",
    "Op",
    "PayloadError",
    "PayloadSpec",
    "PerformanceBudgets",
    "RankInfo",
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
    "allowed_values",
    "deliver",
    "emit_event",
    "example_payload",
    "is_active_stage",
    "is_failure_stage",
    "is_terminal_stage",
    "is_valid_transition",
    "make_event",
    "new_event_id",
    "payload_fits",
    "payload_problem",
    "recorded_payload_problem",
    "render_events_markdown",
    "set_strict_payloads",
    "sink_failures",
    "spec_for",
    "strict_payloads",
    "validate_payload",
]
