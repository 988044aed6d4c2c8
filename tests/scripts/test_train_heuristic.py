"""Real ``esper train heuristic`` runs, read back and checked against the payload catalogue."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from esper.leyline import (
    SEED_FIELDS,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
    is_valid_transition,
    validate_payload,
)
from esper.nissa import read_events

ET = TelemetryEventType
SEED_EVENTS = {
    ET.SEED_GERMINATED, ET.SEED_STAGE_CHANGED, ET.SEED_GATE_EVALUATED, ET.SEED_FOSSILIZED,
    ET.SEED_CULLED,
}  # fmt: skip


def _train(tmp: Path, *flags: str) -> tuple[list[TelemetryEvent], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "heuristic", "--max-epochs", "30",
         "--telemetry-dir", str(tmp), *flags],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replay = read_events(tmp, strict=True)
    assert replay.problems == []
    return replay.events, proc.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[TelemetryEvent], str, Path]:
    tmp = tmp_path_factory.mktemp("heuristic")
    events, out = _train(tmp, "--save", str(tmp / "host.pt"), "--baseline")
    return events, out, tmp


@pytest.mark.slow
def test_every_event_carries_every_required_catalogue_field(
    run: tuple[list[TelemetryEvent], str, Path],
) -> None:
    events, _, _ = run
    for event in events:
        validate_payload(event.event_type, event.data)  # raises naming the field


def _completed(events: list[TelemetryEvent]) -> TelemetryEvent:
    (done,) = [e for e in events if e.event_type is ET.TRAINING_COMPLETED]
    return done


@pytest.mark.slow
def test_the_run_tells_its_story_from_start_to_end(
    run: tuple[list[TelemetryEvent], str, Path],
) -> None:
    events, out, tmp = run
    types = {e.event_type for e in events}
    assert events[0].event_type is ET.TRAINING_STARTED
    # The run's story ends with TRAINING_COMPLETED; the record, with the telemetry's account.
    assert events[-2].event_type is ET.TRAINING_COMPLETED
    assert events[-2].data["status"] == "completed"
    assert events[-1].event_type is ET.TELEMETRY_CLOSED
    assert events[-1].data["complete"] is True
    expected = {
        ET.EPOCH_COMPLETED, ET.SEED_GERMINATED, ET.SEED_GATE_EVALUATED, ET.SEED_STAGE_CHANGED,
        ET.COUNTERFACTUAL_COMPUTED, ET.PLATEAU_DETECTED, ET.CHECKPOINT_SAVED,
    }  # fmt: skip
    assert expected <= types
    ends = [e for e in events if e.event_type in (ET.SEED_FOSSILIZED, ET.SEED_CULLED)]
    assert ends, "no seed was fossilized or culled"
    for e in ends:
        if e.event_type is ET.SEED_CULLED:
            assert e.data["reason"]
    scopes = {e.data["scope"] for e in events if e.event_type is ET.EPOCH_COMPLETED}
    assert scopes == {"env", "aggregate"}
    per_env = [e for e in events if e.event_type is ET.EPOCH_COMPLETED and e.data["scope"] == "env"]
    assert len(per_env) == 30
    assert all(e.data["host_grad_norm"] > 0 for e in per_env)
    assert any(e.data["seeds"] for e in per_env)
    assert len({e.run_id for e in events}) == 1
    assert "Telemetry will be saved to:" in out
    assert "final validation accuracy" in out
    assert "host-only baseline, same seed" in out
    assert (tmp / "host.pt").stat().st_size > 0


@pytest.mark.slow
def test_seed_events_follow_valid_transitions_and_carry_env_and_device(
    run: tuple[list[TelemetryEvent], str, Path],
) -> None:
    events, _, _ = run
    stage: dict[str, SeedStage] = {}
    seen: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e.event_type not in SEED_EVENTS:
            continue
        for f in SEED_FIELDS:
            assert f.name in e.data
        assert e.data["env_id"] == 0
        assert e.data["device"] == "cpu"
        assert e.seed_id == e.data["seed_id"]
        seen[e.data["seed_id"]].append(e.event_type.name)
        if e.event_type is ET.SEED_GERMINATED:
            stage[e.seed_id] = SeedStage.GERMINATED  # type: ignore[index]
        elif e.event_type is ET.SEED_STAGE_CHANGED:
            a, b = SeedStage[e.data["from_stage"]], SeedStage[e.data["to_stage"]]
            assert is_valid_transition(a, b), (a, b)
            assert stage[e.seed_id] is a  # type: ignore[index]
            stage[e.seed_id] = b  # type: ignore[index]
    assert all(names[0] == "SEED_GERMINATED" for names in seen.values())


@pytest.mark.slow
def test_nan_loss_fault_makes_the_governor_roll_back_and_the_run_finish(tmp_path: Path) -> None:
    events, _ = _train(tmp_path, "--max-epochs", "8", "--inject-fault", "nan-loss@4")
    rollbacks = [e for e in events if e.event_type is ET.GOVERNOR_ROLLBACK]
    assert len(rollbacks) == 1
    data = rollbacks[0].data
    assert (data["reason"], data["env_id"], data["device"]) == ("nan_loss", 0, "cpu")
    assert rollbacks[0].epoch == 4
    assert _completed(events).data["status"] == "completed"
    final = [e for e in events if e.event_type is ET.EPOCH_COMPLETED and e.data["scope"] == "env"][
        -1
    ]
    assert final.data["train_loss"] == final.data["train_loss"]  # finite again, not NaN


@pytest.mark.slow
def test_exploding_gradients_fault_reports_a_gradient_anomaly(tmp_path: Path) -> None:
    events, _ = _train(tmp_path, "--max-epochs", "6", "--inject-fault", "exploding-gradients@4")
    anomalies = [e for e in events if e.event_type is ET.GRADIENT_ANOMALY]
    assert anomalies
    assert {(a.data["kind"], a.data["scope"], a.epoch) for a in anomalies} >= {
        ("exploding", "host", 4)
    }
    assert all(a.data["value"] > a.data["threshold"] for a in anomalies)


@pytest.mark.slow
def test_cifar10_trains_from_a_local_archive(tmp_path: Path) -> None:
    from tests.tolaria.test_data import _cifar_dir

    data = _cifar_dir(tmp_path / "data")
    events, out = _train(
        tmp_path / "runs", "--task", "cifar10", "--data-dir", str(data), "--max-epochs", "2"
    )
    started = events[0].data
    assert (started["task"], started["max_epochs"]) == ("cifar10", 2)
    assert _completed(events).data["status"] == "completed"
    assert "final validation accuracy" in out


@pytest.mark.slow
def test_a_bad_cifar_directory_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "heuristic", "--task", "cifar10",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"--data-dir: {tmp_path} holds neither cifar-10-batches-py/" in proc.stderr
