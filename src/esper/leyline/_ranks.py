"""RankInfo: which process of a job this is (one rank of a ``torchrun`` job, or the only one)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

COLLECTIVE_OPS: tuple[str, ...] = (
    "broadcast",
    "all_reduce_gradients",
    "all_reduce_scalar",
    "all_gather_batch",
)
"""The cross-rank operations a multi-rank PPO run times (the ``op`` label of
``esper_collective_wait_seconds``)."""


@dataclass(frozen=True, slots=True)
class RankInfo:
    """This process's place in its job. A process not started by ``torchrun`` is rank 0 of a
    world of 1 (``distributed`` is False)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0
    """The launcher's (node's) index in the job: torchrun's GROUP_RANK."""
    node: str = ""
    """The host name of this process's node."""
    restart_count: int = 0
    """How often torchrun restarted the job's workers (TORCHELASTIC_RESTART_COUNT)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def labels(self) -> dict[str, str]:
        """What names this process in a scrape target or a trace resource."""
        return {"rank": str(self.rank), "local_rank": str(self.local_rank), "node": self.node}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> RankInfo:
        """Read torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, GROUP_RANK,
        TORCHELASTIC_RESTART_COUNT; LOCAL_WORLD_SIZE is the placement's,
        ``esper.runs.placement``); a value that is not a number is a ValueError
        naming the variable."""
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            text = env.get(name)
            if text is None or text == "":
                return default
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"environment variable {name}={text!r} is not a number") from None

        world = number("WORLD_SIZE", 1)
        return cls(
            rank=number("RANK", 0),
            local_rank=number("LOCAL_RANK", 0),
            world_size=world,
            node_rank=number("GROUP_RANK", 0),
            node=socket.gethostname(),
            restart_count=number("TORCHELASTIC_RESTART_COUNT", 0),
        )
