"""One run over many processes: the ranks of a ``torchrun`` job.

``start(device)`` joins the job's default process group when torchrun started this process
(WORLD_SIZE > 1): gloo on CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK`` when CUDA is
there. Without torchrun it returns None and the run is the single process it always was.

What the ranks agree on goes from rank 0 to all (``agree``): the run id and the name of the
run directory. When a rank stops because another one went away, ``lost_ranks`` names the
ranks of its node whose process is gone (or a zombie) without having said it stopped, and
the ranks anywhere that said they failed (through torchrun's store, which outlives the
workers), so TRAINING_COMPLETED can say which rank was lost.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from esper.leyline import RankInfo, UsageError
from esper.nissa import start_daemon_thread
from esper.nissa.prometheus.targets import process_stat
from esper.simic.collectives import ProcessGroupCollectives

STORE_PREFIX = "esper"
STORE_TIMEOUT = timedelta(seconds=5)
DEFAULT_COLLECTIVE_TIMEOUT = 1800.0
"""torch.distributed's own default: how long a collective waits for the other ranks."""
STALL_WARN_SECONDS = 60.0
"""How long a rank waits in one collective before it says which ranks it waits for (a
quarter of the collective timeout when that is shorter)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Where another rank runs."""

    rank: int
    node: str
    node_rank: int
    pid: int


class Distributed:
    """This process's membership of a multi-rank run (see the module docstring)."""

    def __init__(
        self, info: RankInfo, device: str, timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    ) -> None:
        self.info = info
        self.device = device
        self.timeout = timeout
        """Seconds a collective may wait for the other ranks before the run fails."""
        self._watch: _StallWatch | None = None
        self.comm = ProcessGroupCollectives(device)
        me = (info.node, info.node_rank, os.getpid())
        everyone: list[Any] = [None] * info.world_size
        dist.all_gather_object(everyone, me)
        self.peers = [
            Peer(rank, str(node), int(node_rank), int(pid))
            for rank, (node, node_rank, pid) in enumerate(everyone)
        ]
        self._store = _agent_store()
        self._key = ""
        self.lost: list[int] = []
        """The ranks found gone when this rank's run stopped (set by the run lifecycle)."""

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank says ``ok`` (each rank must ask)."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def join_run(self, run_id: str) -> None:
        """Name the run in the store's keys (after the run id is agreed)."""
        self._key = f"{STORE_PREFIX}/{run_id}"

    @property
    def key(self) -> str:
        """The run's prefix in torchrun's store."""
        return self._key

    def mark_stopped(self, status: str) -> None:
        """Tell the other ranks this one stopped, and how (best effort)."""
        if self._store is None or not self._key:
            return
        with contextlib.suppress(Exception):
            self._store.set(f"{self._key}/stopped/{self.info.rank}", status)

    def _said_stopped(self, rank: int) -> str | None:
        if self._store is None or not self._key:
            return None
        key = f"{self._key}/stopped/{rank}"
        with contextlib.suppress(Exception):
            if self._store.check([key]):
                return bytes(self._store.get(key)).decode()
        return None

    def lost_ranks(self) -> list[int]:
        """The other ranks that are gone: those that said they failed, and those of this
        node whose process has ended without saying it stopped."""
        lost = []
        for peer in self.peers:
            if peer.rank == self.info.rank:
                continue
            said = self._said_stopped(peer.rank)
            if said == "failed" or (
                said is None and peer.node_rank == self.info.node_rank and not _alive(peer.pid)
            ):
                lost.append(peer.rank)
        return lost

    def describe(self, ranks: list[int]) -> str:
        """``rank 1 (pid 123 on host, node 0)``, for each of ``ranks`` (``, stopped`` for a
        process of this node that SIGSTOP or a debugger holds)."""
        return ", ".join(
            f"rank {p.rank} (pid {p.pid} on {p.node}, node {p.node_rank}"
            + (", stopped" if self._stopped(p) else "")
            + ")"
            for p in self.peers
            if p.rank in ranks
        )

    def _stopped(self, peer: Peer) -> bool:
        return peer.node_rank == self.info.node_rank and _process_state(peer.pid) in ("T", "t")

    def watch_stalls(self, warn: Callable[[str], None]) -> None:
        """Say (through ``warn``) when this rank has waited in one collective longer than
        ``stall_warn_seconds``, naming the ranks behind it: a stopped, hung or far slower rank
        holds every other one until the collective timeout."""
        if self._watch is None:
            self._watch = _StallWatch(self, warn)
            self._watch.start()

    @property
    def stall_warn_seconds(self) -> float:
        return min(STALL_WARN_SECONDS, self.timeout / 4)

    def wait_for_local_peers(self, timeout: float, poll: float = 0.05) -> list[int]:
        """Wait up to ``timeout`` seconds for the other ranks of this node to exit (their
        records are then complete); returns those still running."""
        deadline = time.monotonic() + timeout
        while True:
            running = [p.rank for p in self.peers if p.rank != self.info.rank
                       and p.node_rank == self.info.node_rank and _alive(p.pid)]  # fmt: skip
            if not running or time.monotonic() >= deadline:
                return running
            time.sleep(poll)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class _StallWatch:
    """A daemon thread that posts how many collectives this rank has entered to torchrun's
    store, and when this rank waits too long in one, reads the others' counts to name the
    ranks behind it. Every store call is on this thread: training never waits for the store."""

    def __init__(self, ranks: Distributed, warn: Callable[[str], None]) -> None:
        self.ranks = ranks
        self.warn = warn
        self._stop = threading.Event()

    def start(self) -> None:
        start_daemon_thread(self._run, "esper-stall-watch")

    def stop(self) -> None:
        self._stop.set()

    def _key(self, rank: int) -> str:
        return f"{self.ranks.key}/entered/{rank}"

    def _run(self) -> None:
        store = _agent_store()
        ranks, comm = self.ranks, self.ranks.comm
        posted, warned = -1, None
        while not self._stop.wait(1.0):
            entered = comm.entered
            if store is not None and entered != posted:
                with contextlib.suppress(Exception):
                    store.set(self._key(ranks.info.rank), str(entered))
                    posted = entered
            flight = comm.in_flight
            if flight is None or flight == warned:
                continue
            op, since = flight
            waited = time.perf_counter() - since
            if waited < ranks.stall_warn_seconds:
                continue
            warned = flight
            behind = self._behind(store, entered)
            who = ranks.describe(behind) if behind else "another rank (which one is unknown)"
            self.warn(
                f"waiting {waited:.0f} s in {op} (collective {entered}) for {who}; every rank "
                f"waits for the slowest, and the run fails after --collective-timeout "
                f"{ranks.timeout:g} s unless it arrives"
            )

    def _behind(self, store: Any, entered: int) -> list[int]:
        """The ranks that have entered fewer collectives than this one (from the store), or
        without a store, the stopped processes of this node."""
        behind = []
        for peer in self.ranks.peers:
            if peer.rank == self.ranks.info.rank:
                continue
            theirs: int | None = None
            if store is not None:
                with contextlib.suppress(Exception):
                    if store.check([self._key(peer.rank)]):
                        theirs = int(bytes(store.get(self._key(peer.rank))).decode())
                    else:
                        theirs = 0
            if (theirs is not None and theirs < entered) or self.ranks._stopped(peer):
                behind.append(peer.rank)
        return behind


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, D, T for stopped, Z for a zombie...), or
    None when there is no such process ('?' when it exists but /proc cannot tell)."""
    stat = process_stat(pid)
    if stat is not None:
        return stat.state
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "?"
    return "?"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not; nor does
    one stopped by SIGSTOP or a debugger, which will not take part in a collective)."""
    return _process_state(pid) not in (None, "Z", "X", "T", "t")


def _agent_store() -> Any:
    """A client of torchrun's own store (its agent outlives the workers), if it has one."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    try:
        return dist.TCPStore(  # type: ignore[attr-defined]
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=STORE_TIMEOUT,
        )
    except Exception:  # noqa: BLE001 - no store only means ranks of other nodes go unnamed
        return None


def check_device(device: str) -> None:
    """A UsageError naming ``--device`` when ``device`` is not on this machine."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")


def rank_device(info: RankInfo, requested: str | None) -> str:
    """The device a rank steps its envs on: ``cuda:LOCAL_RANK`` when CUDA is there (or asked
    for with ``--device cuda``), the CPU when asked (``--device cpu``) or without CUDA."""
    if requested is None:
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        check_device("cuda")
        return f"cuda:{info.local_rank}"
    raise UsageError(
        f"--device {requested}: under torchrun each rank uses one device: cuda:LOCAL_RANK "
        "(--device cuda) or the CPU (--device cpu)"
    )


def start(
    requested_device: str | None, timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
) -> Distributed | None:
    """Join the job's process group when torchrun started this process with more than one
    rank; None otherwise. A bad torchrun variable or device is a UsageError. A collective that
    waits ``timeout`` seconds for the other ranks fails the run."""
    try:
        info = RankInfo.from_environment()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not info.distributed:
        return None
    device = rank_device(info, requested_device)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(
        backend,
        device_id=torch.device(device) if backend == "nccl" else None,
        timeout=timedelta(seconds=timeout),
    )
    return Distributed(info, device, timeout)
