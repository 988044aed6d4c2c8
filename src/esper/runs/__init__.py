"""Runs: one home for a training run, whichever controller drives it."""

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
