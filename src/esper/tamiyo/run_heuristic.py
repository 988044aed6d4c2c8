"""The heuristic run: ``n_envs`` envs per episode, each grown by its own HeuristicTamiyo."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from esper.leyline import TelemetryEvent, TelemetryEventType, make_event
from esper.nissa import emit as hub_emit
from esper.tamiyo.heuristic import HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.config import RunConfig
from esper.tolaria.environment import MorphogeneticEnv
from esper.tolaria.run_common import (
    Progress,
    RunResult,
    build_envs,
    emit_aggregate_epoch,
    run_completion,
    save_checkpoint,
    training_started_payload,
)

ET = TelemetryEventType


def save_host_checkpoint(
    config: RunConfig, env: MorphogeneticEnv, episodes: int, emit: Callable[[TelemetryEvent], None]
) -> str:
    assert config.save is not None
    payload = {"kind": "esper-host", "run_id": config.run_id, "episodes_completed": episodes,
               "model": env.model.state_dict()}  # fmt: skip
    return save_checkpoint(payload, config.save, episodes=episodes,
                           emit=emit if config.telemetry.lifecycle else None)  # fmt: skip


def run_heuristic(
    config: RunConfig,
    *,
    emit: Callable[[TelemetryEvent], None] = hub_emit,
    progress: Progress | None = None,
) -> RunResult:
    """Train ``config.episodes`` episodes with the heuristic controller, emitting telemetry."""
    start = time.perf_counter()
    tel = config.telemetry
    envs = build_envs(config, emit=emit)
    result = RunResult(config.run_id)
    if tel.lifecycle:
        emit(
            make_event(
                ET.TRAINING_STARTED,
                training_started_payload(config, envs[0].model.host_param_count()),
                message=f"heuristic run {config.run_id} on {config.task}",
            )
        )
    total = config.episodes * config.max_epochs

    def finish() -> None:
        for key in result.counts:
            result.counts[key] = sum(e.counts[key] for e in envs)
        result.wall_time_seconds = time.perf_counter() - start

    with run_completion(emit if tel.lifecycle else None, result, finish):
        for episode in range(config.episodes):
            controllers = [HeuristicTamiyo(param_budget=config.param_budget) for _ in envs]
            trackers = [SignalTracker(e.env_id, emit=emit if tel.analytics else None) for e in envs]
            for env in envs:
                env.reset(episode)
            for epoch in range(1, config.max_epochs + 1):
                config.check_stop()
                results = []
                for env, ctl, tracker in zip(envs, controllers, trackers, strict=True):
                    r = env.run_epoch(epoch, episode, config.max_epochs)
                    results.append(r)
                    plateau = tracker.update(r.val_accuracy, epoch)
                    d = ctl.decide(
                        env.slots,
                        plateau=plateau,
                        inner_epoch=epoch,
                        max_epochs=config.max_epochs,
                        seed_params=env.seed_params(),
                    )
                    env.apply(d.op, d.slot_id, d.blueprint_id, d.blend)
                if tel.analytics:
                    emit_aggregate_epoch(emit, results, episode, any(t.plateau for t in trackers))
                if progress is not None:
                    acc = statistics.fmean(r.val_accuracy for r in results)
                    progress(
                        episode * config.max_epochs + epoch,
                        total,
                        f"episode {episode + 1}/{config.episodes} val {acc:.1f}%",
                    )
            result.episodes_completed = episode + 1
            result.final_accuracies = [e.last_val_accuracy for e in envs]
        if config.save is not None:
            result.checkpoint = save_host_checkpoint(
                config, envs[0], result.episodes_completed, emit
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
