"""Compute placement: threads per process are chosen from the cores and the processes on the
node, overridable, and reported in TRAINING_STARTED."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from esper.leyline import TelemetryEventType
from esper.nissa import InMemoryOutput
from esper.runs import RunConfig, run_training
from esper.runs.placement import choose_threads, cores_available, local_world_size


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "local", "expected"), [(16, 1, 16), (16, 4, 4), (2, 2, 1), (2, 8, 1), (6, 4, 1)]
)
def test_threads_are_the_cores_shared_by_the_local_processes(
    cores: int, local: int, expected: int
) -> None:
    p = choose_threads(cores=cores, local_processes=local)
    assert (p.threads, p.source) == (expected, "auto")
    assert choose_threads(3, cores=cores, local_processes=local).threads == 3  # --threads wins


def test_the_local_world_comes_from_torchrun_and_the_cores_from_the_affinity() -> None:
    assert local_world_size({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_world_size({}) == 1
    assert local_world_size({"LOCAL_WORLD_SIZE": "bogus"}) == 1
    assert cores_available() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("threads", "source"), [(1, "flag"), (None, "auto")])
def test_a_run_uses_and_reports_its_threads(threads: int | None, source: str) -> None:
    hub = InMemoryOutput()
    config = RunConfig(mode="heuristic", max_epochs=1, threads=threads)
    run_training(config, hub=hub)
    (started,) = [e for e in hub.events if e.event_type is TelemetryEventType.TRAINING_STARTED]
    expected = choose_threads(threads)
    assert (started.data["threads"], started.data["threads_source"]) == (
        expected.threads,
        source,
    )
    assert started.data["cpu_cores"] == cores_available()
    assert torch.get_num_threads() == expected.threads
