"""Nissa is the telemetry hub: it takes every event and delivers it to the output backends."""

from esper.nissa.console import ConsoleOutput, format_event
from esper.nissa.hub.backend import Backend, OutputBackend
from esper.nissa.hub.fork import register_fork_resource
from esper.nissa.hub.hub import NissaHub, emit, get_hub, reset_hub
from esper.nissa.hub.memory import InMemoryOutput, capture_events
from esper.nissa.hub.signals import (
    STOP_SIGNALS,
    install_signal_handlers,
    signals_blocked,
    start_daemon_thread,
)
from esper.nissa.hub.stats import BackendStats, HubStats
from esper.nissa.record.files import (
    EVENTS_FILE,
    RUN_DIR_TIME_FORMAT,
    DirectoryOutput,
    FileOutput,
    parse_run_dir_time,
)
from esper.nissa.record.jsonl import SCHEMA_VERSION, decode_line, encode_event, to_jsonable
from esper.nissa.record.replay import LineProblem, Replay, iter_events, read_events

__all__ = [
    "EVENTS_FILE",
    "RUN_DIR_TIME_FORMAT",
    "SCHEMA_VERSION",
    "STOP_SIGNALS",
    "Backend",
    "BackendStats",
    "ConsoleOutput",
    "DirectoryOutput",
    "FileOutput",
    "HubStats",
    "InMemoryOutput",
    "LineProblem",
    "NissaHub",
    "OutputBackend",
    "Replay",
    "capture_events",
    "decode_line",
    "emit",
    "encode_event",
    "format_event",
    "get_hub",
    "install_signal_handlers",
    "iter_events",
    "parse_run_dir_time",
    "read_events",
    "register_fork_resource",
    "reset_hub",
    "signals_blocked",
    "start_daemon_thread",
    "to_jsonable",
]
