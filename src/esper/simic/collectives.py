"""What PPO needs from the other ranks of a run, and how long it waited for them.

``Collectives`` is the interface the PPO driver and trainer call; ``LocalCollectives`` is the
single-process one (every call returns at once and nothing is timed), and
``ProcessGroupCollectives`` runs each call as one ``torch.distributed`` collective on the
default process group (gloo on CPU, nccl on CUDA), timing it.

A collective blocks until every rank has reached it, so its wall time is mostly the time this
rank waited for the slowest one: ``waits`` collects (operation, seconds) per call until
``take_waits()`` hands them to the batch's telemetry.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from esper.leyline import ACTION_HEADS, Op


class Collectives(Protocol):
    """The cross-rank operations of a PPO run (see the module docstring)."""

    rank: int
    world_size: int

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make ``module``'s parameters and buffers rank 0's."""

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (a missing one counts as zero)."""

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (the same length on every rank), in rank order."""

    def take_waits(self) -> list[tuple[str, float]]:
        """(operation, seconds) of each collective since the last call, and forget them."""


class LocalCollectives:
    """One process: nothing to agree with, nothing to wait for."""

    rank = 0
    world_size = 1

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        return None

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        return None

    def mean(self, value: float) -> float:
        return value

    def gather(self, values: list[float]) -> list[list[float]]:
        return [list(values)]

    def take_waits(self) -> list[tuple[str, float]]:
        return []


class ProcessGroupCollectives:
    """The collectives on the default ``torch.distributed`` process group, each timed.

    Tensors travel on ``device`` (the rank's CUDA device under nccl, the CPU under gloo).
    Gradients go in one flat buffer per call: one all-reduce per optimizer step, whatever the
    number of parameters.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(device)
        self._waits: list[tuple[str, float]] = []
        self.entered = 0
        """Collectives this rank has entered: the ranks compare theirs to find who is behind."""
        self.in_flight: tuple[str, float] | None = None
        """(operation, perf_counter at entry) of the collective this rank waits in, if any."""

    def _enter(self, op: str) -> float:
        start = time.perf_counter()
        self.entered += 1
        self.in_flight = (op, start)
        return start

    def _timed(self, op: str, start: float) -> None:
        self.in_flight = None
        self._waits.append((op, time.perf_counter() - start))

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """One broadcast per dtype of the module's tensors (bit for bit, counters too)."""
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in [*module.parameters(), *module.buffers()]:
            groups.setdefault(t.dtype, []).append(t)
        for tensors in groups.values():
            flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in tensors])
            start = self._enter("broadcast")
            dist.broadcast(flat, src=0)
            self._timed("broadcast", start)
            offset = 0
            with torch.no_grad():
                for t in tensors:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view_as(t))
                    offset += n

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad for p in params
        ]  # a head no sample used this minibatch still takes part
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        start = self._enter("all_reduce_gradients")
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self._timed("all_reduce_gradients", start)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(p.device)  # views of one buffer
            offset += n

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        start = self._enter("all_reduce_scalar")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self._timed("all_reduce_scalar", start)
        return float(t.item()) / self.world_size

    def gather(self, values: list[float]) -> list[list[float]]:
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        start = self._enter("all_gather_batch")
        dist.all_gather(out, mine)
        self._timed("all_gather_batch", start)
        return [t.tolist() for t in out]

    def take_waits(self) -> list[tuple[str, float]]:
        waits, self._waits = self._waits, []
        return waits


def policy_digest(policy: torch.nn.Module) -> str:
    """A short hash of the policy's parameters and buffers: equal on every rank of a run
    exactly when their policies are (one device-to-host copy of the policy)."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in policy.state_dict().values()])
    return hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()[:16]


_REDUCTIONS: dict[str, str] = {
    **dict.fromkeys(
        ("policy_loss", "value_loss", "entropy", "kl_divergence", "clip_fraction",
         "explained_variance", "ratio_mean", *(f"head_{h}_entropy" for h in ACTION_HEADS)),
        "mean",
    ),
    "ratio_min": "min",
    "ratio_max": "max",
    "ratio_std": "pooled_std",
    "update_time_ms": "max",
    "entropy_collapsed": "any",
}  # fmt: skip
"""How PPO_UPDATE_COMPLETED's per-rank values combine into the run's. The fields not listed
(gradient norms and health, layer counts, train steps, early stop, the entropy coefficient)
are the same on every rank: they come from the averaged gradients and the agreed early stop."""


def _reduce(key: str, by_key: dict[str, list[float]]) -> float | bool:
    values = by_key[key]
    how = _REDUCTIONS[key]
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    if how == "any":
        return any(v != 0.0 for v in values)
    if how == "pooled_std":  # every rank has as many samples: pool the variances
        means = by_key["ratio_mean"]
        grand = statistics.fmean(means)
        return math.sqrt(
            statistics.fmean(s * s + (m - grand) ** 2 for s, m in zip(values, means, strict=True))
        )
    return statistics.fmean(values)


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


@dataclass(slots=True)
class RunBatch:
    """A batch's figures over every rank."""

    accuracies: list[float]
    rewards: list[float]
    action_counts: dict[str, int]
    success_counts: dict[str, int]
    mask_hits: list[int]
    decisions: int
    metrics: dict[str, Any]


def gather_batch(
    comm: Collectives,
    *,
    accuracies: list[float],
    rewards: list[float],
    action_counts: Mapping[str, int],
    success_counts: Mapping[str, int],
    mask_hits: list[int],
    decisions: int,
    metrics: dict[str, Any],
) -> RunBatch:
    """A batch over all ranks, from one all-gather of every rank's packed figures (with one
    rank: this rank's own, unchanged); the PPO figures combined as ``_REDUCTIONS`` says."""
    ops = [op.name for op in Op]
    scalars = [k for k in _REDUCTIONS if k in metrics]
    packed = [
        *accuracies,
        *rewards,
        *(action_counts[o] for o in ops),
        *(success_counts[o] for o in ops),
        *mask_hits,
        decisions,
        *(_as_float(metrics[k]) for k in scalars),
    ]
    ranks = comm.gather([float(v) for v in packed])
    n, k, h = len(accuracies), len(ops), len(mask_hits)

    def column(start: int, length: int) -> list[list[float]]:
        return [row[start : start + length] for row in ranks]

    def summed(start: int, length: int) -> list[int]:
        return [int(sum(col)) for col in zip(*column(start, length), strict=True)]

    run = RunBatch(
        accuracies=[a for row in column(0, n) for a in row],
        rewards=[r for row in column(n, n) for r in row],
        action_counts=dict(zip(ops, summed(2 * n, k), strict=True)),
        success_counts=dict(zip(ops, summed(2 * n + k, k), strict=True)),
        mask_hits=summed(2 * n + 2 * k, h),
        decisions=summed(2 * n + 2 * k + h, 1)[0],
        metrics=dict(metrics),
    )
    if len(ranks) > 1:
        start = 2 * n + 2 * k + h + 1
        by_key = {key: [row[start + j] for row in ranks] for j, key in enumerate(scalars)}
        for key in scalars:
            run.metrics[key] = _reduce(key, by_key)
    return run
