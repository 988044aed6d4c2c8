"""The heuristic controller's driver: a run's episodes, each env grown by its own HeuristicTamiyo.

A driver is how a controller goes through a run, unit by unit; the run lifecycle
(``esper.runs``) owns everything around it: the run's identity, its start and end events,
checkpoints, stop requests and the telemetry backends. For the heuristic a unit is one episode
of every env.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from esper.leyline import EmitsEvents
from esper.tamiyo.heuristic import HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.environment import EpisodeSettings, MorphogeneticEnv, emit_aggregate_epoch

HeuristicSettings = EpisodeSettings
"""The heuristic needs nothing beyond what every driver does."""


class HeuristicDriver:
    """Drives the heuristic controller: ``units()`` episodes, one ``run_unit`` each."""

    mode = "heuristic"

    def __init__(
        self, envs: list[MorphogeneticEnv], hub: EmitsEvents, settings: HeuristicSettings
    ) -> None:
        self.envs = envs
        self.hub = hub
        self.settings = settings
        self.episodes_completed = 0
        self.final_accuracies: list[float] = []
        self.episode_rewards: list[float] = []
        """Mean episode reward per unit: none, the heuristic is not rewarded."""

    def units(self) -> int:
        return self.settings.episodes

    def unit_steps(self) -> int:
        """Progress steps per unit: its epochs."""
        return self.settings.max_epochs

    def started_fields(self) -> dict[str, object]:
        """TRAINING_STARTED fields of the controller: none beyond the run's."""
        return {}

    def run_unit(self, episode: int, progress: Callable[[int, str], None] | None = None) -> str:
        """Train one episode of every env; ``progress(steps done in the unit, status)`` after
        each epoch. Returns the unit's status line."""
        s, envs, tel = self.settings, self.envs, self.settings.telemetry
        emit = self.hub.emit
        controllers = [HeuristicTamiyo(param_budget=s.param_budget) for _ in envs]
        trackers = [SignalTracker(e.env_id, emit=emit if tel.analytics else None) for e in envs]
        for env in envs:
            env.reset(episode)
        status = ""
        for epoch in range(1, s.max_epochs + 1):
            s.check_stop()
            started = time.perf_counter()
            results = []
            for env, ctl, tracker in zip(envs, controllers, trackers, strict=True):
                r = env.run_epoch(epoch, episode, s.max_epochs)
                results.append(r)
                plateau = tracker.update(r.val_accuracy, epoch)
                d = ctl.decide(
                    env.slots,
                    plateau=plateau,
                    inner_epoch=epoch,
                    max_epochs=s.max_epochs,
                    seed_params=env.seed_params(),
                )
                env.apply(d.op, d.slot_id, d.blueprint_id, d.blend)
            if tel.analytics:
                emit_aggregate_epoch(
                    emit,
                    results,
                    episode,
                    any(t.plateau for t in trackers),
                    epoch_seconds=time.perf_counter() - started,
                )
            acc = statistics.fmean(r.val_accuracy for r in results)
            status = f"episode {episode + 1}/{s.episodes} val {acc:.1f}%"
            if progress is not None:
                progress(epoch, status)
        self.episodes_completed = episode + 1
        self.final_accuracies = [e.last_val_accuracy for e in envs]
        return status

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds: the first env's host (with its seeds)."""
        return {"kind": "esper-host", "model": self.envs[0].model.state_dict()}

    def restore(self, checkpoint: dict[str, Any], source: str) -> int:
        """The heuristic keeps no state between episodes, so there is nothing to resume."""
        raise ValueError(f"{source}: only ppo runs resume (the heuristic has no state)")
