"""How a batch's figures combine over ranks, without starting any: one packed gather, then
concatenation, sums, and the update vitals' own reductions."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist

from esper.leyline import ACTION_HEADS, COLLECTIVE_OPS, Op
from esper.simic.collectives import LocalCollectives, ProcessGroupCollectives
from esper.simic.vectorized import VectorizedPPO, _BatchStats


class TwoRanks(LocalCollectives):
    """Rank 0 of 2, whose peer sends ``other`` (packed the same way)."""

    world_size = 2

    def __init__(self, other: list[float]) -> None:
        self.other = other
        self.calls = 0

    def gather(self, values: list[float]) -> list[list[float]]:
        self.calls += 1
        return [list(values), list(self.other)]


def _metrics(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "policy_loss": 1.0, "value_loss": 2.0, "entropy": 3.0, "kl_divergence": 0.01,
        "clip_fraction": 0.1, "explained_variance": 0.5, "ratio_mean": 1.0, "ratio_min": 0.9,
        "ratio_max": 1.1, "ratio_std": 0.05, "update_time_ms": 10.0, "grad_norm": 0.4,
        "entropy_collapsed": False, "nan_grad_count": 0, "early_stop_epoch": None,
        **{f"head_{h}_entropy": 0.5 for h in ACTION_HEADS},
    }  # fmt: skip
    m.update(over)
    return m


def _stats(counts: dict[str, int], ok: dict[str, int]) -> _BatchStats:
    stats = _BatchStats()
    stats.action_counts.update(counts)
    stats.success_counts.update(ok)
    return stats


def _gather(comm: Any, accs: list[float], rewards: list[float], stats: _BatchStats,
            hits: list[int], decisions: int, metrics: dict[str, Any]) -> Any:  # fmt: skip
    driver = SimpleNamespace(comm=comm)
    return VectorizedPPO._gather_batch(
        driver,  # type: ignore[arg-type]
        accs, rewards, stats, mask_hits=hits, decisions=decisions, metrics=metrics,
    )  # fmt: skip


def _packed(accs: list[float], rewards: list[float], stats: _BatchStats, hits: list[int],
            decisions: int, metrics: dict[str, Any]) -> list[float]:  # fmt: skip
    """What the other rank would send: the same packing, through a one-rank gather."""
    captured: list[list[float]] = []

    class Capture(LocalCollectives):
        def gather(self, values: list[float]) -> list[list[float]]:
            captured.append(values)
            return [values]

    _gather(Capture(), accs, rewards, stats, hits, decisions, metrics)
    return captured[0]


def test_one_rank_keeps_its_own_figures_unchanged() -> None:
    metrics = _metrics(ratio_std=0.123456789)
    run = _gather(LocalCollectives(), [90.0, 80.0], [1.0, 2.0], _stats({"WAIT": 3}, {"WAIT": 3}),
                  [1, 0, 2, 0], 6, metrics)  # fmt: skip
    assert run.accuracies == [90.0, 80.0]
    assert run.metrics == metrics  # not even the last bit of a float moves


def test_two_ranks_concatenate_envs_sum_counts_and_reduce_the_vitals() -> None:
    other_metrics = _metrics(
        policy_loss=3.0, ratio_mean=1.2, ratio_min=0.7, ratio_max=1.05, ratio_std=0.05,
        update_time_ms=30.0, entropy_collapsed=True,
    )  # fmt: skip
    other = _packed([70.0, 60.0], [3.0, 4.0], _stats({"WAIT": 1, "CULL": 2}, {"CULL": 1}),
                    [0, 1, 1, 1], 6, other_metrics)  # fmt: skip
    comm = TwoRanks(other)
    run = _gather(comm, [90.0, 80.0], [1.0, 2.0], _stats({"WAIT": 3}, {"WAIT": 3}),
                  [1, 0, 2, 0], 6, _metrics())  # fmt: skip
    assert comm.calls == 1  # one collective for the whole batch
    assert run.accuracies == [90.0, 80.0, 70.0, 60.0]  # rank order = global env id order
    assert run.rewards == [1.0, 2.0, 3.0, 4.0]
    assert run.action_counts["WAIT"] == 4
    assert run.action_counts["CULL"] == 2
    assert run.success_counts == {**dict.fromkeys((op.name for op in Op), 0), "WAIT": 3, "CULL": 1}
    assert run.mask_hits == [1, 1, 3, 1]
    assert run.decisions == 12
    m = run.metrics
    assert m["policy_loss"] == pytest.approx(2.0)  # mean
    assert m["ratio_min"] == 0.7  # min
    assert m["ratio_max"] == 1.1  # max
    assert m["update_time_ms"] == 30.0  # the slowest rank's
    assert m["entropy_collapsed"] is True  # any
    # Pooled over equal halves: the spread within each rank plus between their means.
    assert m["ratio_std"] == pytest.approx(
        math.sqrt(statistics.fmean([0.05**2 + 0.1**2, 0.05**2 + 0.1**2]))
    )
    assert m["grad_norm"] == 0.4  # the same on every rank: not reduced
    assert m["early_stop_epoch"] is None


def test_a_process_group_times_exactly_the_catalogued_operations(tmp_path: Path) -> None:
    # A real gloo group of one rank: every call runs its collective and is timed under an
    # op the exporter knows in advance (COLLECTIVE_OPS), so no rank's series is born late.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        comm = ProcessGroupCollectives()
        comm.broadcast_parameters(torch.nn.Linear(2, 2))
        layer = torch.nn.Linear(2, 1)
        layer(torch.ones(1, 2)).sum().backward()
        comm.average_gradients(layer.parameters())
        assert comm.mean(3.0) == 3.0
        assert comm.gather([1.0, 2.0]) == [[1.0, 2.0]]
        waits = comm.take_waits()
    finally:
        dist.destroy_process_group()
    assert {op for op, _ in waits} == set(COLLECTIVE_OPS)
    assert all(seconds >= 0 for _, seconds in waits)
