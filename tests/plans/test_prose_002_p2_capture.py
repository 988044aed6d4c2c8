"""Plan 002 (P2 capture gaps): its schema additions and its verification checklist, checked
on a real PPO run replayed into the Sanctum aggregator."""

from __future__ import annotations

import dataclasses

import pytest

from esper.karn.sanctum import SanctumAggregator
from esper.karn.sanctum.schema import RunConfig, SanctumSnapshot, TamiyoState
from tests.plans.conftest import Run

pytestmark = pytest.mark.slow


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def test_run_config_has_the_plans_fields_and_defaults() -> None:
    d = _defaults(RunConfig)
    assert {k: d[k] for k in ("seed", "n_episodes", "lr", "clip_ratio", "entropy_coef",
                              "param_budget", "resume_path", "entropy_anneal")} == {
        "seed": None, "n_episodes": 0, "lr": 0.0, "clip_ratio": 0.2, "entropy_coef": 0.01,
        "param_budget": 0, "resume_path": "", "entropy_anneal": {},
    }  # fmt: skip
    assert isinstance(SanctumSnapshot().run_config, RunConfig)


def test_tamiyo_state_and_snapshot_have_the_plans_per_head_and_batch_fields() -> None:
    t = _defaults(TamiyoState)
    for name in ("head_slot_entropy", "head_slot_grad_norm", "head_blueprint_entropy",
                 "head_blueprint_grad_norm"):  # fmt: skip
        assert t[name] == 0.0
    assert (t["inner_epoch"], t["batch"]) == (0, 0)
    s = _defaults(SanctumSnapshot)
    assert (s["batch_avg_reward"], s["batch_total_episodes"]) == (0.0, 0)


def test_verification_checklist_on_a_real_run(ppo_run: Run) -> None:
    agg = SanctumAggregator()
    culled = 0
    for e in ppo_run.events:
        agg.process_event(e)
        if e.event_type.name == "SEED_CULLED":
            # SEED_CULLED | blueprint_id | env.seeds[slot_id].blueprint_id
            seed = agg.get_snapshot().envs[e.data["env_id"]].seeds[e.data["slot_id"]]
            assert seed.blueprint_id == e.data["blueprint_id"] != ""
            culled += 1
    assert culled >= 2
    snap = agg.get_snapshot()
    started = ppo_run.of("TRAINING_STARTED")[0].data
    update = ppo_run.of("PPO_UPDATE_COMPLETED")[-1].data
    batch = ppo_run.of("BATCH_EPOCH_COMPLETED")[-1].data
    checklist = [
        (snap.run_config.seed, started["seed"], 6),
        (snap.run_config.n_episodes, started["n_episodes"], 4),
        (snap.run_config.lr, started["lr"], 3e-4),
        (snap.tamiyo.head_slot_entropy, update["head_slot_entropy"], None),
        (snap.tamiyo.head_blueprint_entropy, update["head_blueprint_entropy"], None),
        (snap.batch_avg_reward, batch["avg_reward"], None),
        (snap.batch_total_episodes, batch["total_episodes"], 4),
    ]
    for captured, emitted, expected in checklist:
        assert captured == emitted
        if expected is not None:
            assert emitted == expected
    assert snap.tamiyo.head_slot_entropy > 0  # a real entropy, not the default
    # The other captures the plan adds: hyperparameters, per-head grad norms, PPO context.
    assert snap.run_config.clip_ratio == 0.2
    assert snap.run_config.entropy_anneal == {"start": 0.05, "end": 0.005, "episodes": 4}
    assert snap.run_config.param_budget == started["param_budget"] == 60_000
    assert snap.run_config.resume_path is None  # a fresh run, as the event says
    assert snap.tamiyo.head_blueprint_grad_norm == update["head_blueprint_grad_norm"]
    assert (snap.tamiyo.inner_epoch, snap.tamiyo.batch) == (15, 1)
