"""The one exception hierarchy of Esper.

    EsperError
     +-- UsageError            a bad flag or argument value (the CLI exits 2)
     +-- PayloadError          a payload that does not match the catalogue (names the field)
     +-- TelemetryError        the telemetry system itself
          +-- BackendConfigError   a backend cannot start (unwritable path, port taken)
          +-- BackendError         a backend failed while delivering (disk full, dead collector)
          +-- ReplayError          a telemetry file cannot be read back
               +-- CorruptLineError    a JSONL line is not a valid event (names file:line)

    KeyboardInterrupt
     +-- RunInterrupted        a run asked to stop (SIGTERM, the Sanctum UI); not an error

Every message names what was wrong and where: the flag, the file and line, the field.
"""

from __future__ import annotations


class EsperError(Exception):
    """Base of every error Esper raises on purpose."""


class UsageError(EsperError, ValueError):
    """A command-line flag or argument has a bad value."""


class PayloadError(EsperError, ValueError):
    """An event payload does not match its entry in the payload catalogue."""


class TelemetryError(EsperError):
    """Base of errors raised by the telemetry system."""


class BackendConfigError(TelemetryError):
    """A telemetry backend cannot be set up (raised before training starts)."""


class BackendError(TelemetryError):
    """A telemetry backend failed while delivering events."""


class ReplayError(TelemetryError):
    """A telemetry file or run directory cannot be read back."""


class RunInterrupted(KeyboardInterrupt):
    """A run was asked to stop between epochs (a signal, or the Sanctum UI). A
    KeyboardInterrupt, so every handler that treats Ctrl-C as "interrupted" treats it so."""


class CorruptLineError(ReplayError):
    """One line of a JSONL telemetry file is not a valid event."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
