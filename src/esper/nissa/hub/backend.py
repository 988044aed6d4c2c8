"""What the hub delivers events to: the OutputBackend contract and its duck-typed Protocol."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

from esper.leyline import TelemetryEvent


@runtime_checkable
class Backend(Protocol):
    """Anything with ``emit(event)``, ``flush()`` and ``close()`` can be a hub backend.

    Optional attributes the hub reads when present: ``name`` (default: the class name),
    ``lost`` (items taken but not kept; default 0), ``deliver_in_forked_child`` (default True),
    and a ``timeout`` keyword on ``flush``/``close`` (the hub then passes its deadline down).
    """

    def emit(self, event: TelemetryEvent) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class OutputBackend(ABC):
    """A destination for telemetry events (the base class of Esper's own backends).

    The hub calls ``emit`` and ``flush`` from its delivery thread for this backend, one call at
    a time, and ``close`` once after the last delivery, on that same thread. ``close`` must be
    idempotent. A backend may raise from ``emit`` or ``flush``: the hub counts the failure,
    reports it once, and keeps delivering to every other backend.
    """

    deliver_in_forked_child: bool = True
    """Whether a hub in a forked child keeps delivering to this backend. False for backends
    whose resources stay with the parent (a served endpoint, a UI, an open trace)."""

    @property
    def name(self) -> str:
        """A short name for stats, metrics and error messages."""
        return type(self).__name__

    @abstractmethod
    def emit(self, event: TelemetryEvent) -> None:
        """Take one event."""

    @property
    def lost(self) -> int:
        """Items this backend accepted but could not keep (a full disk, a dead collector).
        Only ever goes up."""
        return 0

    def flush(self) -> None:  # noqa: B027 - most backends have nothing to flush
        """Make everything taken so far durable or visible."""

    def close(self) -> None:
        """Flush and release resources. A second call does nothing."""
        self.flush()


_REQUIRED = ("emit", "flush", "close")


def check_backend(backend: object) -> None:
    """Raise TypeError naming the object's class when it lacks a method of the contract."""
    missing = [m for m in _REQUIRED if not callable(getattr(backend, m, None))]
    if missing:
        raise TypeError(
            f"{type(backend).__name__} is not a telemetry backend: it has no "
            f"{', '.join(f'{m}()' for m in missing)} (needs emit(event), flush(), close())"
        )


def backend_name(backend: object) -> str:
    """The backend's ``name``, or its class name when it has none."""
    name = getattr(backend, "name", None)
    return name if isinstance(name, str) and name else type(backend).__name__


def backend_lost(backend: object) -> int:
    """The backend's own ``lost`` count, or 0 when it keeps none (or reading it fails)."""
    try:
        lost = getattr(backend, "lost", 0)
    except Exception:  # noqa: BLE001 - a user's property must not break the stats
        return 0
    return lost if isinstance(lost, int) else 0


def accepts_timeout(method: Any) -> bool:
    """True when ``method`` takes a ``timeout`` keyword (the hub then passes its deadline)."""
    try:
        return "timeout" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
