"""The one guarded path by which model and training code emit events: ``emit_event``.

What it guarantees, and where:

- in strict mode (``ESPER_STRICT_PAYLOADS=1``, as the test suite runs) a payload that breaks the
  catalogue raises PayloadError to the caller, at the line that built it;
- in production the event is built unchecked and delivered; the hub checks it off the training
  thread, counts it invalid, and the run's verdict says so (exit status 3);
- a sink that raises (a user's ``on_telemetry`` callback, a broken backend wired in directly)
  never stops training: the failure is logged and counted in ``sink_failures()``, which the
  run's summary reports as lost events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from esper.leyline._events import Severity, TelemetryEvent, TelemetryEventType
from esper.leyline._payloads import make_event

_log = logging.getLogger("esper.telemetry")
_lock = threading.Lock()
_failures = 0
_first_failure: str | None = None


def emit_event(
    sink: Callable[[TelemetryEvent], None],
    event_type: TelemetryEventType,
    data: dict[str, Any],
    *,
    message: str = "",
    severity: Severity = Severity.INFO,
    seed_id: str | None = None,
    slot_id: str | None = None,
    epoch: int | None = None,
) -> bool:
    """Build an event (``make_event``) and hand it to ``sink``. True when the sink took it;
    False (logged and counted) when the sink raised. PayloadError propagates in strict mode."""
    event = make_event(
        event_type,
        data,
        message=message,
        severity=severity,
        seed_id=seed_id,
        slot_id=slot_id,
        epoch=epoch,
    )
    return deliver(sink, event)


def deliver(sink: Callable[[TelemetryEvent], None], event: TelemetryEvent) -> bool:
    """Hand an event built with ``make_event`` to ``sink``: True when it took it; False
    (logged and counted) when it raised."""
    try:
        sink(event)
    except Exception as exc:  # noqa: BLE001 - telemetry never stops training; counted below
        _count_failure(event.event_type, exc)
        return False
    return True


def _count_failure(event_type: TelemetryEventType, exc: Exception) -> None:
    global _failures, _first_failure  # noqa: PLW0603 - one process-wide count, like the hub's
    with _lock:
        _failures += 1
        if _first_failure is None:
            _first_failure = f"{event_type.name}: {type(exc).__name__}: {exc}"
    _log.warning("telemetry sink failed on %s", event_type.name, exc_info=exc)


def sink_failures() -> tuple[int, str | None]:
    """How many events a sink refused in this process so far, and the first of them."""
    with _lock:
        return _failures, _first_failure
