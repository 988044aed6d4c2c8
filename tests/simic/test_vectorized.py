"""Vectorized PPO: real runs whose telemetry covers the whole catalogue, levels, helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.kasmina import SeedSlot
from esper.leyline import (
    CATALOGUE,
    DISCRIMINATORS,
    LIFECYCLE_EVENT_TYPES,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    UsageError,
    validate_payload,
)
from esper.nissa import InMemoryOutput, read_events
from esper.runs import run_training
from esper.runs.config import RunConfig
from esper.simic.ppo import gae
from esper.simic.vectorized import (
    _apply_slot_telemetry,
    _emit_cf_unavailable,
    _emit_ppo_update_event,
)
from esper.tolaria.data import load_task
from esper.tolaria.environment import Fault, MorphogeneticEnv

ET = TelemetryEventType


def _key(e: TelemetryEvent) -> tuple[TelemetryEventType, str | None]:
    disc = DISCRIMINATORS.get(e.event_type)
    return (e.event_type, None if disc is None else e.data[disc])


def _train(*flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "ppo", *flags],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[TelemetryEvent], list[TelemetryEvent], str]:
    """A short debug-level run with both faults and a checkpoint, then a resumed run.

    Seed 6 is a run (deterministic on CPU) in which a seed also reaches fossilization.
    """
    tmp = tmp_path_factory.mktemp("ppo")
    common = ["--n-envs", "2", "--max-epochs", "15", "--telemetry-level", "debug", "--seed", "6"]
    first = _train(
        *common, "--episodes", "4", "--telemetry-dir", str(tmp / "a"), "--save",
        str(tmp / "ck.pt"), "--inject-fault", "nan-loss@5", "--inject-fault",
        "exploding-gradients@8",
    )  # fmt: skip
    _train(
        *common,
        "--episodes",
        "2",
        "--telemetry-dir",
        str(tmp / "b"),
        "--resume",
        str(tmp / "ck.pt"),
    )
    a = read_events(tmp / "a", strict=True).events
    b = read_events(tmp / "b", strict=True).events
    return a, b, first.stdout


@pytest.mark.slow
def test_the_runs_cover_every_event_type_and_snapshot_kind_of_the_catalogue(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    a, b, _ = runs
    seen = {_key(e) for e in a + b}
    # At debug nothing escalates: tests/simic/test_escalation.py emits the level changes.
    skipped = {ET.TELEMETRY_WARNING, ET.TELEMETRY_LEVEL_CHANGED}
    missing = sorted(f"{t.name}:{v}" for t, v in set(CATALOGUE) - seen if t not in skipped)
    # A single process has no collectives: tests/runs/test_distributed.py covers that kind.
    missing.remove("ANALYTICS_SNAPSHOT:collectives")
    assert not missing, f"never emitted: {missing}"


@pytest.mark.slow
def test_every_event_carries_every_catalogue_field(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    a, b, _ = runs
    for e in a + b:
        spec = validate_payload(e.event_type, e.data)
        assert set(e.data) == {f.name for f in spec.fields}, spec.title


@pytest.mark.slow
def test_ppo_update_carries_its_vital_signs(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    a, _, out = runs
    updates = [e for e in a if e.event_type is ET.PPO_UPDATE_COMPLETED]
    assert [u.data["batch"] for u in updates] == [0, 1]
    for u in updates:
        d = u.data
        assert d["lr"] == pytest.approx(3e-4)
        assert d["update_time_ms"] > 0
        assert d["grad_norm"] > 0
        assert d["train_steps"] >= 1
        assert d["inner_epoch"] == 15
        assert all(d[f"head_{h}_entropy"] >= 0 for h in ("op", "slot", "blueprint", "blend"))
    assert "mean episode reward" in out


@pytest.mark.slow
def test_resume_continues_the_episode_count(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    _, b, _ = runs
    loaded = [e for e in b if e.event_type is ET.CHECKPOINT_LOADED]
    assert loaded[0].data["episodes_completed"] == 4
    batch = next(e for e in b if e.event_type is ET.BATCH_EPOCH_COMPLETED).data
    assert (batch["start_episode"], batch["requested_episodes"], batch["total_episodes"]) == (
        4,
        2,
        6,
    )
    assert batch["episodes_completed"] == 6
    assert batch["batch_idx"] == 2


@pytest.mark.slow
def test_faults_reach_the_telemetry(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    a, _, _ = runs
    rollbacks = [e for e in a if e.event_type is ET.GOVERNOR_ROLLBACK]
    assert {(r.data["env_id"], r.data["reason"], r.epoch) for r in rollbacks} == {
        (0, "nan_loss", 5)
    }
    assert len(rollbacks) == 2  # one per batch: the fault hits env 0 of every episode
    kinds = {(g.data["kind"], g.epoch) for g in a if g.event_type is ET.GRADIENT_ANOMALY}
    assert ("exploding", 8) in kinds


@pytest.mark.slow
def test_mask_hits_never_exceed_decisions(
    runs: tuple[list[TelemetryEvent], list[TelemetryEvent], str],
) -> None:
    a, _, _ = runs
    for e in a:
        if e.event_type is ET.ANALYTICS_SNAPSHOT and e.data["kind"] == "mask_hit_rates":
            assert e.data["mask_total"]["op"] == 2 * 14  # 2 envs, 14 decisions each
            for h, hits in e.data["mask_hits"].items():
                assert 0 <= hits <= e.data["mask_total"][h]
            assert e.data["mask_hits"]["op"] > 0  # CULL/FOSSILIZE are impossible at first


def _small(
    level: TelemetryLevel, lifecycle_only: bool = False, escalate: int = 0
) -> list[TelemetryEvent]:
    """A one-env run with a rollback; no escalation unless asked (test_escalation.py)."""
    hub = InMemoryOutput()
    run_training(
        RunConfig(
            mode="ppo", episodes=1, n_envs=1, max_epochs=6, seed=3,
            telemetry=TelemetryConfig(level, lifecycle_only), faults=(Fault("nan-loss", 2),),
            escalate_epochs=escalate,
        ),
        hub=hub,
    )  # fmt: skip
    return hub.events


@pytest.mark.slow
def test_level_off_emits_nothing_from_training() -> None:
    assert _small(TelemetryLevel.OFF) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("level", "lifecycle_only"), [(TelemetryLevel.OFF, True), (TelemetryLevel.MINIMAL, False)]
)
def test_minimal_and_lifecycle_only_emit_lifecycle_events_and_anomalies_only(
    level: TelemetryLevel, lifecycle_only: bool
) -> None:
    events = _small(level, lifecycle_only, escalate=3)  # which asks for no detail here
    types = {e.event_type for e in events}
    assert ET.GOVERNOR_ROLLBACK in types
    assert types <= LIFECYCLE_EVENT_TYPES | {ET.GRADIENT_ANOMALY}


@pytest.mark.slow
def test_normal_adds_analytics_and_debug_adds_per_step_decisions() -> None:
    normal = {_key(e) for e in _small(TelemetryLevel.NORMAL)}
    debug = {_key(e) for e in _small(TelemetryLevel.DEBUG)}
    per_step = {(ET.ANALYTICS_SNAPSHOT, "last_action"), (ET.REWARD_COMPUTED, None)}
    assert {(ET.PPO_UPDATE_COMPLETED, None), (ET.ANALYTICS_SNAPSHOT, "throughput")} <= normal
    assert not per_step & normal
    assert per_step <= debug


def test_apply_slot_telemetry_lifecycle_only_keeps_slot_events_on() -> None:
    hub = InMemoryOutput()
    env = MorphogeneticEnv(0, load_task("digits"), emit=hub.emit)
    config = _apply_slot_telemetry(env, telemetry_enabled=False, lifecycle_only=True)
    assert config.lifecycle
    assert not config.analytics
    slot = env.model.slot("mid")
    assert isinstance(slot, SeedSlot)
    slot.germinate("conv_light", "s")
    assert [e.event_type for e in hub.events] == [ET.SEED_GERMINATED]
    _apply_slot_telemetry(env, telemetry_enabled=False, lifecycle_only=False)
    slot.cull("controller")
    assert len(hub.events) == 1


def test_emit_ppo_update_event_reports_lr_grad_norm_and_update_time() -> None:
    hub = InMemoryOutput()
    policy = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.0123)
    metrics = {f.name: 0.5 for f in CATALOGUE[(ET.PPO_UPDATE_COMPLETED, None)].fields}
    for k in ("nan_grad_count", "dead_layers", "exploding_layers", "train_steps"):
        metrics[k] = 1
    metrics |= {"layer_gradient_health_by_layer": {}, "entropy_collapsed": False,
                "early_stop_epoch": None}  # fmt: skip
    for k in ("lr", "grad_norm", "update_time_ms", "inner_epoch", "batch"):
        metrics.pop(k)
    _emit_ppo_update_event(
        hub=hub, metrics=metrics, episodes_completed=8, batch_idx=1, epoch=15,
        optimizer=optimizer, grad_norm=3.5, update_time_ms=12.5,
    )  # fmt: skip
    (event,) = hub.events
    assert (event.data["lr"], event.data["grad_norm"], event.data["update_time_ms"]) == (
        0.0123,
        3.5,
        12.5,
    )
    assert (event.data["batch"], event.data["inner_epoch"]) == (1, 15)


def test_emit_cf_unavailable() -> None:
    hub = InMemoryOutput()
    _emit_cf_unavailable(hub, env_id=0, slot_id="mid", reason="missing_baseline")
    (event,) = hub.events
    assert event.event_type is ET.COUNTERFACTUAL_COMPUTED
    assert event.data == {
        "env_id": 0, "slot_id": "mid", "available": False, "reason": "missing_baseline",
        "real_accuracy": None, "baseline_accuracy": None, "contribution": None,
    }  # fmt: skip


def test_resume_refuses_a_checkpoint_that_is_not_ours(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"format": "other"}, bad)
    with pytest.raises(UsageError, match=r"--resume .*bad\.pt: not an esper-ppo-v1 checkpoint"):
        run_training(
            RunConfig(mode="ppo", episodes=1, n_envs=1, max_epochs=2, resume=bad),
            hub=InMemoryOutput(),
        )


class Payload:
    """An arbitrary object: a checkpoint holding one is refused by weights_only loading."""


def test_resume_loads_with_weights_only(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "esper-ppo-v1", "x": Payload()}, evil)
    with pytest.raises(UsageError, match="not a loadable checkpoint"):
        run_training(
            RunConfig(mode="ppo", episodes=1, n_envs=1, max_epochs=2, resume=evil),
            hub=InMemoryOutput(),
        )


def test_gae_matches_a_hand_computation() -> None:
    adv = gae([1.0, 0.0, 2.0], [0.5, 0.5, 0.5], gamma=0.9, lam=0.8)
    d2 = 2.0 - 0.5
    d1 = 0.0 + 0.9 * 0.5 - 0.5
    d0 = 1.0 + 0.9 * 0.5 - 0.5
    assert adv[2] == pytest.approx(d2)
    assert adv[1] == pytest.approx(d1 + 0.72 * d2)
    assert adv[0] == pytest.approx(d0 + 0.72 * (d1 + 0.72 * d2))
