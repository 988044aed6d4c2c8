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

import time
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.distributed as dist


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
