"""MorphogeneticEnv details: the counterfactual schedule and the per-env device map."""

from __future__ import annotations

import pytest
import torch

from esper.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper.runs.config import RunConfig
from esper.tolaria.data import load_task
from esper.tolaria.environment import EnvConfig, MorphogeneticEnv

HEALTHY = {"has_nonfinite": False, "has_exploding": False, "has_vanishing": False}


def _blending_env(schedule: str, events: list[TelemetryEvent]) -> MorphogeneticEnv:
    env = MorphogeneticEnv(0, load_task("digits"), config=EnvConfig(counterfactual=schedule),
                           emit=events.append)  # fmt: skip
    slot = env.model.slot("mid")
    slot.germinate("conv_light", "s1", val_accuracy=50.0)
    while slot.stage is not SeedStage.BLENDING:
        slot.end_epoch(50.0, HEALTHY)
    slot.end_epoch(50.0, HEALTHY)  # alpha > 0
    events.clear()
    return env


def _cf_events(events: list[TelemetryEvent]) -> list[dict[str, object]]:
    return [e.data for e in events if e.event_type is TelemetryEventType.COUNTERFACTUAL_COMPUTED]


def test_final_epoch_schedule_measures_the_baseline_only_on_the_last_epoch() -> None:
    events: list[TelemetryEvent] = []
    env = _blending_env("final_epoch", events)
    result = env.run_epoch(1, 0, 2)
    assert result.counterfactuals == {"mid": None}
    assert _cf_events(events)[-1]["reason"] == "missing_baseline"
    result = env.run_epoch(2, 0, 2)
    assert isinstance(result.counterfactuals["mid"], float)
    assert _cf_events(events)[-1]["available"] is True


def test_every_epoch_schedule_measures_every_time() -> None:
    events: list[TelemetryEvent] = []
    env = _blending_env("every_epoch", events)
    result = env.run_epoch(1, 0, 5)
    assert isinstance(result.counterfactuals["mid"], float)
    assert _cf_events(events)[-1]["contribution"] == result.counterfactuals["mid"]


def test_an_epoch_reads_device_values_back_once_even_with_baselines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _blending_env("every_epoch", [])
    calls = 0
    real = torch.Tensor.tolist

    def tolist(self: torch.Tensor) -> object:
        nonlocal calls
        calls += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    result = env.run_epoch(1, 0, 5)
    assert result.counterfactuals["mid"] is not None
    assert calls == 1


def test_envs_are_dealt_round_robin_over_the_devices() -> None:
    config = RunConfig(mode="ppo", n_envs=5, device="cuda:0,cuda:1")
    assert config.devices == ["cuda:0", "cuda:1"]
    assert config.env_devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert config.device_map_strategy == "round_robin"
    assert RunConfig(mode="ppo", n_envs=2).device_map_strategy == "single_device"
