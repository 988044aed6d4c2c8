"""Compute placement: how many CPU threads a training process uses, chosen rather than
inherited.

torch's default is one intra-op thread per core the machine has. When several processes share
the machine (ranks of one job under ``torchrun``, or a job beside another) each takes every core
and they fight over them. So a run uses the cores it may run on
(its CPU affinity, which containers and ``taskset`` narrow) divided by the processes on this
node (``LOCAL_WORLD_SIZE``, set by ``torchrun``; 1 otherwise), at least one; ``--threads``
overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch


def cores_available() -> int:
    """The CPU cores this process may run on (its affinity; the machine's count without one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_world_size(environ: Mapping[str, str] | None = None) -> int:
    """Processes of this job on this node: ``LOCAL_WORLD_SIZE`` from torchrun, else 1."""
    value = (os.environ if environ is None else environ).get("LOCAL_WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class Placement:
    """The threads a run chose, and what it chose them from (reported in TRAINING_STARTED)."""

    threads: int
    cores: int
    local_processes: int
    source: str
    """``auto`` (cores / local processes) or ``flag`` (--threads)."""


def choose_threads(
    override: int | None = None, *, cores: int | None = None, local_processes: int | None = None
) -> Placement:
    """How many intra-op threads this process should use (see the module docstring)."""
    cores = cores_available() if cores is None else cores
    local = local_world_size() if local_processes is None else local_processes
    if override is not None:
        return Placement(override, cores, local, "flag")
    return Placement(max(1, cores // local), cores, local, "auto")


def apply(placement: Placement) -> None:
    """Set torch's intra-op thread count for this process."""
    torch.set_num_threads(placement.threads)
