"""TelemetryEvent: the one typed record every part of training emits."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, IntEnum, StrEnum
from typing import Any, Protocol


class TelemetryEventType(Enum):
    """Every kind of event. Each member is emitted by real training code."""

    TRAINING_STARTED = "TRAINING_STARTED"
    TRAINING_COMPLETED = "TRAINING_COMPLETED"
    EPOCH_COMPLETED = "EPOCH_COMPLETED"
    BATCH_EPOCH_COMPLETED = "BATCH_EPOCH_COMPLETED"
    PPO_UPDATE_COMPLETED = "PPO_UPDATE_COMPLETED"
    REWARD_COMPUTED = "REWARD_COMPUTED"
    SEED_GERMINATED = "SEED_GERMINATED"
    SEED_STAGE_CHANGED = "SEED_STAGE_CHANGED"
    SEED_GATE_EVALUATED = "SEED_GATE_EVALUATED"
    SEED_FOSSILIZED = "SEED_FOSSILIZED"
    SEED_CULLED = "SEED_CULLED"
    COUNTERFACTUAL_COMPUTED = "COUNTERFACTUAL_COMPUTED"
    ANALYTICS_SNAPSHOT = "ANALYTICS_SNAPSHOT"
    GOVERNOR_ROLLBACK = "GOVERNOR_ROLLBACK"
    GRADIENT_ANOMALY = "GRADIENT_ANOMALY"
    PLATEAU_DETECTED = "PLATEAU_DETECTED"
    CHECKPOINT_SAVED = "CHECKPOINT_SAVED"
    CHECKPOINT_LOADED = "CHECKPOINT_LOADED"
    TELEMETRY_WARNING = "TELEMETRY_WARNING"
    TELEMETRY_LEVEL_CHANGED = "TELEMETRY_LEVEL_CHANGED"
    TELEMETRY_CLOSED = "TELEMETRY_CLOSED"


LIFECYCLE_EVENT_TYPES: frozenset[TelemetryEventType] = frozenset(
    {
        TelemetryEventType.TRAINING_STARTED,
        TelemetryEventType.TRAINING_COMPLETED,
        TelemetryEventType.SEED_GERMINATED,
        TelemetryEventType.SEED_STAGE_CHANGED,
        TelemetryEventType.SEED_GATE_EVALUATED,
        TelemetryEventType.SEED_FOSSILIZED,
        TelemetryEventType.SEED_CULLED,
        TelemetryEventType.GOVERNOR_ROLLBACK,
        TelemetryEventType.CHECKPOINT_SAVED,
        TelemetryEventType.CHECKPOINT_LOADED,
        # The hub's own warnings report drops; dropping them would hide the drops.
        TelemetryEventType.TELEMETRY_WARNING,
        # They bracket the detail a reader looks for: a window missing an end would lie.
        TelemetryEventType.TELEMETRY_LEVEL_CHANGED,
        # The telemetry's own account of the run: the record's verdict on itself.
        TelemetryEventType.TELEMETRY_CLOSED,
    }
)
"""Event types the hub never drops, however loaded it is."""


class Severity(StrEnum):
    """How much an event matters to a person reading the log."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class TelemetryLevel(IntEnum):
    """How much training emits: each level adds to the one below."""

    OFF = 0
    """Nothing but one TELEMETRY_WARNING saying telemetry is off."""
    MINIMAL = 1
    """Lifecycle events: training start and end, seeds, rollbacks, checkpoints."""
    NORMAL = 2
    """Adds per-epoch and per-batch analytics (the default)."""
    DEBUG = 3
    """Adds per-step decisions and reward breakdowns."""


class _EventIds:
    """Cheap unique ids: a random per-process prefix and a counter (a uuid4 costs ~3 us)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}-{next(self.counter):x}"


_IDS = _EventIds()


def new_event_id() -> str:
    """A new event id, unique within and across processes and runs."""
    return _IDS.next()


@dataclass(slots=True)
class TelemetryEvent:
    """One thing that happened in training, with its payload ``data``.

    The instant is taken at creation as integer nanoseconds since the epoch (``timestamp_ns``,
    about 70 ns); ``timestamp`` formats it as an aware UTC datetime only when read.
    """

    event_type: TelemetryEventType
    seed_id: str | None = None
    slot_id: str | None = None
    epoch: int | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    severity: Severity = Severity.INFO
    timestamp_ns: int = field(default_factory=time.time_ns)
    event_id: str = field(default_factory=new_event_id)
    run_id: str | None = None
    """Filled in by the hub from its run id when the emitter leaves it empty."""
    rank: int | None = None
    """The rank of the process that emitted it in a multi-process run (filled in by the
    hub); None in a single-process run."""

    @property
    def timestamp(self) -> datetime:
        """When the event was created, as a timezone-aware UTC datetime (microseconds)."""
        seconds, nanos = divmod(self.timestamp_ns, 1_000_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)

    @property
    def is_lifecycle(self) -> bool:
        """True for events the hub never drops."""
        return self.event_type in LIFECYCLE_EVENT_TYPES


class EmitsEvents(Protocol):
    """Anything with ``emit(event)``: a NissaHub, a backend, or a test double."""

    def emit(self, event: TelemetryEvent) -> None: ...
