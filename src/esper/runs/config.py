"""RunConfig: everything a training run needs, independent of the command line."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline import RankInfo, RunInterrupted, TelemetryConfig
from esper.simic.escalation import DEFAULT_ESCALATE_EPOCHS
from esper.tolaria.environment import Fault


class StopRequest(threading.Event):
    """Set to stop a run at its next epoch boundary; ``reason`` says who asked."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "stop requested"

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


def new_run_id(mode: str) -> str:
    """Sortable and unique: mode, UTC start time, and random bits."""
    return f"{mode}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class RunConfig:
    mode: str
    task: str = "digits"
    data_dir: Path | None = None
    device: str = "cpu"
    seed: int = 42
    episodes: int = 1
    max_epochs: int = 15
    n_envs: int = 1
    """Envs of the run, over all its ranks."""
    vectorized: bool = True
    lr: float = 3e-4
    clip_ratio: float = 0.2
    entropy_coef: float = 0.05
    entropy_anneal: int = 0
    param_budget: int = 60_000
    save: Path | None = None
    resume: Path | None = None
    faults: tuple[Fault, ...] = ()
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    run_id: str = ""
    threads: int | None = None
    """Intra-op CPU threads for this process; None chooses (``esper.runs.placement``)."""
    escalate_epochs: int = DEFAULT_ESCALATE_EPOCHS
    """Epochs an anomaly raises its env's telemetry to debug (0: never); see
    ``esper.simic.escalation``."""
    counterfactual: str = "every_epoch"
    """every_epoch, or final_epoch: measure seeds' alpha=0 baselines only on the last epoch."""
    ranks: RankInfo = field(default_factory=RankInfo)
    """This process's place in the job (rank 0 of 1 without torchrun)."""
    stop: StopRequest | None = field(default=None, compare=False, repr=False)
    """Set it to stop the run at the next epoch boundary (RunInterrupted; status
    ``interrupted``): how a signal or the UI stops training that runs on another thread."""

    def check_stop(self) -> None:
        """Raise RunInterrupted when ``stop`` is set (called between epochs)."""
        if self.stop is not None and self.stop.is_set():
            raise RunInterrupted(self.stop.reason)

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = new_run_id(self.mode)

    @property
    def devices(self) -> list[str]:
        """The devices named by ``device`` (comma-separated for several)."""
        return [d.strip() for d in self.device.split(",") if d.strip()]

    @property
    def local_n_envs(self) -> int:
        """Envs this process steps: its share of ``n_envs``."""
        return self.n_envs // self.ranks.world_size

    @property
    def env_offset(self) -> int:
        """The global id of this process's first env (env ids are unique over ranks)."""
        return self.ranks.rank * self.local_n_envs

    @property
    def env_devices(self) -> list[str]:
        """The device of each of this process's envs: dealt round robin over ``devices``."""
        devices = self.devices
        return [devices[i % len(devices)] for i in range(self.local_n_envs)]

    @property
    def device_map_strategy(self) -> str:
        return "single_device" if len(self.devices) == 1 else "round_robin"
