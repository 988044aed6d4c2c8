"""The run lifecycle: one home for a training run, whichever controller drives it.

``run_training(config)`` owns the run: its envs, TRAINING_STARTED, resuming from a checkpoint
(read with ``weights_only=True``) and CHECKPOINT_LOADED, stop requests between epochs,
TRAINING_COMPLETED however the run ends (completed, interrupted or failed, with why), and the
final checkpoint (written atomically) with CHECKPOINT_SAVED. The controller comes in as a
driver, built from the registry ``DRIVERS`` with one signature, ``driver(config, envs, hub)``:
the heuristic's (``esper.tamiyo.driver``) trains an episode per unit, PPO's
(``esper.simic.vectorized``) a batch per unit.
"""

from __future__ import annotations

import signal
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import (
    EmitsEvents,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
    UsageError,
    emit_event,
)
from esper.nissa import get_hub
from esper.runs.checkpoints import (
    load_checkpoint_file,
    resume_differences,
    run_shape,
    save_checkpoint,
)
from esper.runs.config import RunConfig
from esper.runs.distributed import Distributed
from esper.runs.placement import Placement, choose_threads
from esper.runs.placement import apply as apply_placement
from esper.simic.collectives import Collectives, LocalCollectives
from esper.simic.ppo import PPOConfig
from esper.simic.vectorized import PPOSettings, VectorizedPPO
from esper.tamiyo.driver import HeuristicDriver, HeuristicSettings
from esper.tolaria.data import load_task
from esper.tolaria.environment import EnvConfig, MorphogeneticEnv

ET = TelemetryEventType

Progress = Callable[[int, int, str], None]
"""progress(done, total, status line): called as training advances (per epoch or batch)."""


@dataclass(slots=True)
class RunResult:
    run_id: str
    episodes_completed: int = 0
    final_accuracies: list[float] = field(default_factory=list)
    """Validation accuracy of each env at the end of the last episode."""
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("germinated", "fossilized", "culled"), 0)
    )
    wall_time_seconds: float = 0.0
    checkpoint: str | None = None
    episode_rewards: list[float] = field(default_factory=list)
    """Mean episode reward of each batch, in order (PPO)."""
    lost_ranks: list[int] = field(default_factory=list)
    """Ranks found gone when a multi-rank run stopped."""
    run_counts: dict[str, int] | None = None
    """Seed counts over every rank of a multi-rank run that completed (``counts`` are this
    process's envs' own, as its TRAINING_COMPLETED reports them)."""

    @property
    def final_accuracy(self) -> float | None:
        return statistics.fmean(self.final_accuracies) if self.final_accuracies else None


def training_started_payload(
    config: RunConfig, host_params: int, placement: Placement, **overrides: object
) -> dict[str, object]:
    """TRAINING_STARTED's payload: the run's config, its compute placement, then the
    driver's own fields (PPO's policy) as overrides."""
    devices = config.env_devices
    data: dict[str, object] = {
        "run_id": config.run_id,
        "mode": config.mode,
        "task": config.task,
        "task_type": "classification",
        "topology": "cnn",
        "max_epochs": config.max_epochs,
        "n_envs": config.n_envs,
        "n_episodes": config.episodes,
        "seed": config.seed,
        "policy_device": None,
        "env_devices": devices,
        "env_device_counts": {d: devices.count(d) for d in dict.fromkeys(devices)},
        "env_device_map_strategy": config.device_map_strategy,
        "host_params": host_params,
        "slot_ids": list(SLOT_IDS),
        "blueprint_ids": list(BLUEPRINT_IDS),
        "reward_mode": "none",
        "use_telemetry": False,
        "telemetry_level": config.telemetry.level.name.lower(),
        "state_dim": None,
        "resume_path": None if config.resume is None else str(config.resume),
        "lr": None,
        "clip_ratio": None,
        "entropy_coef": None,
        "entropy_anneal": {},
        "gpu_preload": any(d != "cpu" for d in devices),
        "dataloader": "preloaded_tensors",
        "param_budget": config.param_budget,
        "threads": placement.threads,
        "threads_source": placement.source,
        "cpu_cores": placement.cores,
        "world_size": config.ranks.world_size,
        "rank": config.ranks.rank,
        "local_rank": config.ranks.local_rank,
        "node": config.ranks.node or socket.gethostname(),
        "node_rank": config.ranks.node_rank,
        "restart_count": config.ranks.restart_count,
        "local_n_envs": config.local_n_envs,
        "escalate_epochs": 0,
    }
    data.update(overrides)
    return data


def stop_signal(exc: BaseException) -> int | None:
    """The signal behind a ``SystemExit(128 + signum)`` raised by a signal handler, else None."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        return exc.code - 128
    return None


def describe_stop(exc: BaseException) -> tuple[str, str]:
    """(status, error) of a run ended by ``exc``: ``interrupted`` for Ctrl-C, a stop request
    or a signal's SystemExit; ``failed`` with the exception's type and message otherwise."""
    if isinstance(exc, KeyboardInterrupt):
        what = str(exc) or "Ctrl-C"
        return "interrupted", f"{type(exc).__name__}: {what}"
    if isinstance(exc, SystemExit):
        signum = stop_signal(exc)
        if signum is None:
            return "interrupted", f"SystemExit({exc.code!r})"
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return "interrupted", f"{name} (exit status {128 + signum})"
    return "failed", f"{type(exc).__name__}: {exc}"


@contextmanager
def run_completion(
    emit: Callable[[TelemetryEvent], None] | None,
    result: RunResult,
    finish: Callable[[], None],
    ranks: Distributed | None = None,
) -> Iterator[None]:
    """Around a run's body: however it ends, call ``finish`` (final counts) and emit
    TRAINING_COMPLETED with status ``completed``, ``interrupted`` or ``failed`` and the
    reason (unless ``emit`` is None, i.e. lifecycle telemetry is off); the exception, if any,
    goes on. In a multi-rank run (``ranks``) a rank that stops because another rank is gone
    records ``failed`` and names the lost rank, whatever stopped it (a broken collective,
    or torchrun's SIGTERM)."""
    status, error, lost = "failed", None, []
    try:
        yield
        status = "completed"
    except BaseException as exc:
        status, error = describe_stop(exc)
        if ranks is not None:
            lost = ranks.lost = ranks.lost_ranks()
            if lost:
                status = "failed"
                error = f"lost {ranks.describe(lost)}; this rank stopped: {error}"
        raise
    finally:
        if ranks is not None:
            ranks.mark_stopped(status)
        result.lost_ranks = lost
        finish()
        if emit is not None:
            emit_training_completed(emit, result, status, error)


def emit_training_completed(
    emit: Callable[[TelemetryEvent], None],
    result: RunResult,
    status: str,
    error: str | None = None,
) -> None:
    """TRAINING_COMPLETED: how the run ended and what it did."""
    emit_event(
        emit,
        ET.TRAINING_COMPLETED,
        {
            "status": status,
            "episodes_completed": result.episodes_completed,
            "final_accuracy": result.final_accuracy,
            "wall_time_seconds": result.wall_time_seconds,
            "seeds_germinated": result.counts["germinated"],
            "seeds_fossilized": result.counts["fossilized"],
            "seeds_culled": result.counts["culled"],
            "error": error,
            "lost_ranks": list(result.lost_ranks),
        },
        message=f"run {result.run_id} {status}" + (f": {error}" if error else ""),
        severity=Severity.INFO if status == "completed" else Severity.WARNING,
    )


def build_envs(
    config: RunConfig,
    *,
    emit: Callable[[TelemetryEvent], None] | None = None,
    fast_mode: bool = False,
) -> list[MorphogeneticEnv]:
    """This process's envs (all ``config.n_envs`` of a single-process run, its share of a
    multi-rank one, with global ids), each on its device (the task is copied once per
    device)."""
    task = load_task(config.task, config.data_dir)
    on_device = {d: task.to(d) for d in config.devices}
    env_config = EnvConfig(counterfactual=config.counterfactual)
    kwargs: dict[str, Any] = {} if emit is None else {"emit": emit}
    return [
        MorphogeneticEnv(
            config.env_offset + i,
            on_device[device],
            device=device,
            seed=config.seed,
            config=env_config,
            telemetry=config.telemetry,
            fast_mode=fast_mode,
            faults=() if fast_mode else config.faults,
            straggler=config.env_offset + i == config.n_envs - 1,
            **kwargs,
        )
        for i, device in enumerate(config.env_devices)
    ]


class Driver(Protocol):
    """How a controller goes through a run, unit by unit (see the module docstring)."""

    mode: str
    episodes_completed: int
    final_accuracies: list[float]
    episode_rewards: list[float]

    def units(self) -> int: ...

    def unit_steps(self) -> int: ...

    def started_fields(self) -> dict[str, object]: ...

    def run_unit(self, unit: int, progress: Callable[[int, str], None] | None = None) -> str: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore(self, checkpoint: dict[str, Any], source: str) -> int: ...


def _episodes(config: RunConfig) -> dict[str, Any]:
    """The settings every driver takes from the run's config."""
    return {
        "episodes": config.episodes,
        "max_epochs": config.max_epochs,
        "param_budget": config.param_budget,
        "telemetry": config.telemetry,
        "check_stop": config.check_stop,
    }


def _heuristic(
    config: RunConfig,
    envs: list[MorphogeneticEnv],
    hub: EmitsEvents,
    comm: Collectives | None = None,
) -> Driver:
    if comm is not None and comm.world_size > 1:
        raise UsageError("heuristic runs are single-process; run ppo under torchrun")
    return HeuristicDriver(envs, hub, HeuristicSettings(**_episodes(config)))


def _ppo(
    config: RunConfig,
    envs: list[MorphogeneticEnv],
    hub: EmitsEvents,
    comm: Collectives | None = None,
) -> Driver:
    ppo = PPOConfig(
        lr=config.lr,
        clip_ratio=config.clip_ratio,
        entropy_coef=config.entropy_coef,
        entropy_anneal_episodes=config.entropy_anneal,
    )
    settings = PPOSettings(
        **_episodes(config),
        ppo=ppo,
        vectorized=config.vectorized,
        policy_device=config.devices[0],
        comm=comm if comm is not None else LocalCollectives(),
        total_envs=config.n_envs,
        escalate_epochs=config.escalate_epochs,
    )
    return VectorizedPPO(envs, hub, settings)


DriverFactory = Callable[
    [RunConfig, list[MorphogeneticEnv], EmitsEvents, Collectives | None], Driver
]

DRIVERS: dict[str, DriverFactory] = {
    "heuristic": _heuristic,
    "ppo": _ppo,
}
"""mode -> how to build its driver, ``factory(config, envs, hub, comm)`` (``comm``: the other
ranks, None for one process). A new controller is one entry here (and its driver)."""


def run_training(
    config: RunConfig,
    *,
    hub: EmitsEvents | None = None,
    progress: Progress | None = None,
    ranks: Distributed | None = None,
    on_started: Callable[[], None] | None = None,
) -> RunResult:
    """Train ``config.episodes`` episodes with ``config.mode``'s controller, emitting telemetry
    into ``hub`` (default: the process-wide hub); ``progress(done, total, status)`` as it
    goes. The run is recorded as completed, interrupted or failed however it ends.

    In a multi-rank run (``ranks``, from ``esper.runs.distributed.start``) this process
    trains its share of the envs with the others; rank 0 alone writes the checkpoint.
    ``on_started()`` is called once the run is recorded as started: from then on, however it
    ends, TRAINING_COMPLETED says how."""
    hub = hub if hub is not None else get_hub()
    placement = choose_threads(config.threads)
    apply_placement(placement)
    tel = config.telemetry
    lifecycle_emit = hub.emit if tel.lifecycle else None
    start = time.perf_counter()
    envs = build_envs(config, emit=hub.emit)
    driver = DRIVERS[config.mode](config, envs, hub, None if ranks is None else ranks.comm)
    result = RunResult(config.run_id)
    resumed = 0
    if config.resume is not None:
        checkpoint = load_checkpoint_file(config.resume)
        try:
            resumed = driver.restore(checkpoint, f"--resume {config.resume}")
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        differs = resume_differences(checkpoint, config)
        if lifecycle_emit is not None:
            emit_event(
                lifecycle_emit,
                ET.CHECKPOINT_LOADED,
                {"path": str(config.resume), "episodes_completed": resumed, "differs": differs},
                message=f"resumed from {config.resume} after {resumed} episodes"
                + (f"; this run differs: {', '.join(differs)}" if differs else ""),
                severity=Severity.WARNING if differs else Severity.INFO,
            )

    def finish() -> None:
        result.episodes_completed = driver.episodes_completed
        result.final_accuracies = list(driver.final_accuracies)
        result.episode_rewards = list(driver.episode_rewards)
        for key in result.counts:
            result.counts[key] = sum(e.counts[key] for e in envs)
        result.wall_time_seconds = time.perf_counter() - start

    units, steps = driver.units(), driver.unit_steps()
    with run_completion(lifecycle_emit, result, finish, ranks):
        if lifecycle_emit is not None:
            emit_event(
                lifecycle_emit,
                ET.TRAINING_STARTED,
                training_started_payload(
                    config,
                    envs[0].model.host_param_count(),
                    placement,
                    **driver.started_fields(),
                ),
                message=f"{config.mode} run {config.run_id} on {config.task}"
                + (f" with {len(envs)} envs" if config.mode == "ppo" else ""),
            )
        if on_started is not None:
            on_started()
        for unit in range(units):

            def report(done: int, status: str, unit: int = unit) -> None:
                if progress is not None:
                    progress(unit * steps + done, units * steps, status)

            driver.run_unit(unit, report)
        if ranks is not None:
            mine = [float(sum(e.counts[k] for e in envs)) for k in result.counts]
            totals = [int(sum(col)) for col in zip(*ranks.comm.gather(mine), strict=True)]
            result.run_counts = dict(zip(result.counts, totals, strict=True))
        if config.save is not None and config.ranks.rank == 0:
            episodes = resumed + driver.episodes_completed
            payload = {
                **driver.checkpoint_state(),
                "run_id": config.run_id,
                "episodes_completed": episodes,
                "run": run_shape(config),
            }
            result.checkpoint = save_checkpoint(
                payload, config.save, episodes=episodes, emit=lifecycle_emit
            )
    return result


def run_host_only(config: RunConfig) -> list[float]:
    """The same envs, seeds and data with no controller and no telemetry: the baseline."""
    envs = build_envs(config, fast_mode=True)
    finals = []
    for env in envs:
        env.reset(config.episodes - 1)
        for epoch in range(1, config.max_epochs + 1):
            env.run_epoch(epoch, config.episodes - 1, config.max_epochs)
        finals.append(env.last_val_accuracy)
    return finals
