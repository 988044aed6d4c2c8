"""Runs: one home for a training run, whichever controller drives it."""

# The names below load on first use (PEP 562): a command that only reads a record (esper report,
# esper telemetry) imports esper.runs.report or esper.nissa.prometheus.tsdb without loading torch.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esper.runs.config import RunConfig, StopRequest, new_run_id
    from esper.runs.lifecycle import (
        DRIVERS,
        Driver,
        Progress,
        RunResult,
        build_envs,
        describe_stop,
        run_host_only,
        run_training,
        stop_signal,
    )

_HOMES = {
    **dict.fromkeys(("RunConfig", "StopRequest", "new_run_id"), "esper.runs.config"),
    **dict.fromkeys(
        ("DRIVERS", "Driver", "Progress", "RunResult", "build_envs", "describe_stop",
         "run_host_only", "run_training", "stop_signal"),
        "esper.runs.lifecycle",
    ),
}  # fmt: skip

__all__ = [
    "DRIVERS",
    "Driver",
    "Progress",
    "RunConfig",
    "RunResult",
    "StopRequest",
    "build_envs",
    "describe_stop",
    "new_run_id",
    "run_host_only",
    "run_training",
    "stop_signal",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'esper.runs' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
