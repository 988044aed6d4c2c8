"""The run lifecycle owns a run's start, end, checkpoints and stopping, for any driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from esper.leyline import (
    BackendConfigError,
    RunInterrupted,
    TelemetryEvent,
    TelemetryEventType,
)
from esper.nissa import InMemoryOutput, NissaHub, read_events
from esper.nissa.backends import BackendSpec
from esper.runs import DRIVERS, RunConfig, StopRequest, run_training
from esper.runs.session import RunSession
from esper.tolaria.environment import MorphogeneticEnv

ET = TelemetryEventType


class CountingDriver:
    """A controller that only counts: what a new controller plugs into the lifecycle."""

    mode = "counting"

    def __init__(
        self, config: RunConfig, envs: list[MorphogeneticEnv], hub: Any, comm: Any = None
    ) -> None:
        self.config, self.envs = config, envs
        self.episodes_completed = 0
        self.final_accuracies: list[float] = []
        self.episode_rewards: list[float] = []
        self.restored: dict[str, Any] | None = None

    def units(self) -> int:
        return 3

    def unit_steps(self) -> int:
        return 2

    def started_fields(self) -> dict[str, object]:
        return {"reward_mode": "counting"}

    def run_unit(self, unit: int, progress: Any = None) -> str:
        self.config.check_stop()
        for step in (1, 2):
            if progress is not None:
                progress(step, f"unit {unit} step {step}")
        self.episodes_completed += 1
        self.final_accuracies = [50.0 + unit]
        return f"unit {unit}"

    def checkpoint_state(self) -> dict[str, Any]:
        return {"kind": "counting", "weights": torch.ones(2)}

    def restore(self, checkpoint: dict[str, Any], source: str) -> int:
        if checkpoint.get("kind") != "counting":
            raise ValueError(f"{source}: not a counting checkpoint")
        self.restored = checkpoint
        return int(checkpoint["episodes_completed"])


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DRIVERS, "counting", CountingDriver)


def _types(hub: InMemoryOutput) -> list[str]:
    return [e.event_type.name for e in hub.events]


@pytest.mark.usefixtures("counting")
def test_a_new_controller_is_one_driver_entry_and_the_lifecycle_does_the_rest(
    tmp_path: Path,
) -> None:
    hub, seen = InMemoryOutput(), []
    config = RunConfig(mode="counting", max_epochs=2, save=tmp_path / "ck.pt")
    result = run_training(config, hub=hub, progress=lambda d, t, s: seen.append((d, t)))
    assert _types(hub) == ["TRAINING_STARTED", "CHECKPOINT_SAVED", "TRAINING_COMPLETED"]
    started, saved, completed = hub.events
    assert started.data["run_id"] == config.run_id
    assert started.data["reward_mode"] == "counting"  # the driver's own fields
    assert saved.data["episodes_completed"] == 3
    assert (completed.data["status"], completed.data["episodes_completed"]) == ("completed", 3)
    assert completed.data["final_accuracy"] == 52.0
    assert seen == [(d, 6) for d in range(1, 7)]
    assert (result.episodes_completed, result.checkpoint) == (3, str(tmp_path / "ck.pt"))
    ckpt = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert (ckpt["run_id"], ckpt["episodes_completed"], ckpt["kind"]) == (
        config.run_id,
        3,
        "counting",
    )

    resumed_hub = InMemoryOutput()
    again = RunConfig(mode="counting", max_epochs=2, resume=tmp_path / "ck.pt")
    run_training(again, hub=resumed_hub)
    assert _types(resumed_hub)[:2] == ["CHECKPOINT_LOADED", "TRAINING_STARTED"]
    assert resumed_hub.events[0].data["episodes_completed"] == 3


@pytest.mark.usefixtures("counting")
def test_a_stop_request_ends_the_run_interrupted_with_why() -> None:
    hub = InMemoryOutput()
    stop = StopRequest()
    stop.request("operator pressed q")
    with pytest.raises(RunInterrupted):
        run_training(RunConfig(mode="counting", max_epochs=2, stop=stop), hub=hub)
    completed = hub.events[-1]
    assert completed.event_type is ET.TRAINING_COMPLETED
    assert completed.data["status"] == "interrupted"
    assert "operator pressed q" in completed.data["error"]


@pytest.mark.usefixtures("counting")
def test_a_checkpoint_of_another_kind_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    torch.save({"kind": "other"}, tmp_path / "x.pt")
    with pytest.raises(Exception, match=rf"--resume {tmp_path / 'x.pt'}: not a counting"):
        run_training(RunConfig(mode="counting", resume=tmp_path / "x.pt"), hub=InMemoryOutput())


def test_a_session_attaches_the_runs_backends_and_closes_complete(tmp_path: Path) -> None:
    config = RunConfig(mode="ppo")
    session = RunSession(BackendSpec(telemetry_dir=tmp_path), run_id=config.run_id, hub=NissaHub())
    assert session.hub.run_id == config.run_id
    session.hub.emit(TelemetryEvent(ET.TELEMETRY_WARNING,
                                    data={"reason": "events_dropped", "detail": "x"}))  # fmt: skip
    assert session.close() is True
    (run_dir,) = tmp_path.iterdir()
    (event,) = read_events(run_dir).events
    assert event.run_id == config.run_id


def test_a_session_with_a_bad_path_names_it_and_closes_its_hub(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    hub = NissaHub()
    with pytest.raises(BackendConfigError, match=str(blocker)):
        RunSession(BackendSpec(telemetry_dir=blocker / "x"), hub=hub)
    hub.emit(TelemetryEvent(ET.TELEMETRY_WARNING, data={"reason": "events_lost", "detail": "x"}))
    assert hub.stats().late == 1  # the hub was closed: nothing is left open behind the error
