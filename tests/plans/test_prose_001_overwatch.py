"""Plan 001 (Overwatch phase 1), tasks 1 to 10 and its final verification, on real runs.

The plan's own unit tests are in ``test_plan_001_overwatch_phase1.py``; these check that what
they describe happens in real training: the flag reaches the slots, the payloads carry what
the plan says, and the batch summaries agree with the per-step events they summarise.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from esper.leyline import ACTION_HEADS, Op
from tests.plans.conftest import Run, train

pytestmark = pytest.mark.slow

SEED_EVENTS = ("SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_GATE_EVALUATED",
               "SEED_FOSSILIZED", "SEED_CULLED")  # fmt: skip
HEURISTIC = ("--episodes", "1", "--max-epochs", "20", "--seed", "3")  # germinates, culls


def _seed_events(run: Run) -> list:  # type: ignore[type-arg]
    return [e for e in run.events if e.event_type.name in SEED_EVENTS]


# -- Task 1: lifecycle-only mode, and one warning when telemetry is off ----------------------


@pytest.mark.parametrize("lifecycle_only", [True, False])
def test_task1_lifecycle_only_keeps_seed_events_when_telemetry_is_off(
    tmp_path: Path, lifecycle_only: bool
) -> None:
    flags = ("--telemetry-level", "off", *(["--telemetry-lifecycle-only"] * lifecycle_only))
    run = train(tmp_path, "heuristic", *HEURISTIC, *flags)
    warnings = run.of("TELEMETRY_WARNING")
    assert len(warnings) == 1
    assert "off" in warnings[0].message
    assert not run.of("EPOCH_COMPLETED")  # analytics stay off either way
    if lifecycle_only:
        assert run.of("SEED_GERMINATED"), "the slots' lifecycle events were kept"
    else:
        assert not _seed_events(run)


def test_final_verification_command_of_plan_001() -> None:
    """``python -m esper.scripts.train heuristic --episodes 1 --telemetry-level normal
    --telemetry-lifecycle-only`` (the embedded task standing in for CIFAR)."""
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "heuristic", "--episodes", "1",
         "--telemetry-level", "normal", "--telemetry-lifecycle-only"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "telemetry complete" in proc.stdout


# -- Tasks 2 and 3: env, device, alpha and epochs on lifecycle and rollback events -----------


def test_task2_every_lifecycle_and_rollback_event_names_its_env_and_device(ppo_run: Run) -> None:
    events = [*_seed_events(ppo_run), *ppo_run.of("GOVERNOR_ROLLBACK")]
    assert ppo_run.of("GOVERNOR_ROLLBACK"), "the nan-loss fault made a rollback"
    assert {e.data["env_id"] for e in events} == {0, 1}
    assert {e.data["device"] for e in events} == {"cpu"}


def test_task3_seed_events_carry_alpha_and_both_epochs(ppo_run: Run) -> None:
    events = _seed_events(ppo_run)
    assert {e.event_type.name for e in events} == set(SEED_EVENTS)
    for e in events:
        assert 0.0 <= e.data["alpha"] <= 1.0
        assert e.data["inner_epoch"] == e.epoch
        assert 1 <= e.data["inner_epoch"] <= 15 or e.event_type.name == "SEED_GERMINATED"
    # Two batches of two envs: the batch counter is 0, then 1.
    assert {e.data["global_epoch"] for e in events} == {0, 1}
    blending = [e for e in ppo_run.of("SEED_STAGE_CHANGED") if e.data["to_stage"] == "PROBATIONARY"]
    assert all(e.data["alpha"] == 1.0 for e in blending)


# -- Tasks 4, 6 and 10: per-step last actions, and the batch summaries that count them --------


def _decisions_by_batch(run: Run) -> dict[int, list]:  # type: ignore[type-arg]
    """last_action events, grouped by the batch they happened in (BATCH_EPOCH_COMPLETED
    closes a batch)."""
    out: dict[int, list] = {}  # type: ignore[type-arg]
    batch = 0
    for e in run.events:
        if e.event_type.name == "BATCH_EPOCH_COMPLETED":
            batch += 1
        elif e.event_type.name == "ANALYTICS_SNAPSHOT" and e.data["kind"] == "last_action":
            out.setdefault(batch, []).append(e)
    return out


def test_task4_one_last_action_per_decision_with_every_heads_mask(ppo_run: Run) -> None:
    actions = ppo_run.of("ANALYTICS_SNAPSHOT", "last_action")
    # Each env decides after every epoch but the last: 2 envs x 14 epochs x 2 batches.
    assert len(actions) == 2 * 14 * 2 == len(ppo_run.of("REWARD_COMPUTED"))
    for e in actions:
        assert e.data["op"] in Op.__members__
        assert all(isinstance(e.data[f"{h}_masked"], bool) for h in ACTION_HEADS)
        assert isinstance(e.data["action_success"], bool)
    assert any(e.data["op"] == "GERMINATE" and e.data["action_success"] for e in actions)


def test_task6_action_distribution_counts_the_batchs_decisions(ppo_run: Run) -> None:
    decisions = _decisions_by_batch(ppo_run)
    snapshots = ppo_run.of("ANALYTICS_SNAPSHOT", "action_distribution")
    assert [s.data["batch_idx"] for s in snapshots] == [0, 1]
    for s in snapshots:
        taken = decisions[s.data["batch_idx"]]
        counts = {op: n for op, n in s.data["action_counts"].items() if n}
        assert counts == dict(Counter(e.data["op"] for e in taken))
        assert s.data["success_counts"] == {
            op: sum(e.data["action_success"] for e in taken if e.data["op"] == op)
            for op in s.data["action_counts"]
        }


def test_task10_mask_hit_rates_count_the_masked_heads_of_the_batch(ppo_run: Run) -> None:
    decisions = _decisions_by_batch(ppo_run)
    snapshots = ppo_run.of("ANALYTICS_SNAPSHOT", "mask_hit_rates")
    assert [s.data["batch_idx"] for s in snapshots] == [0, 1]
    for s in snapshots:
        taken = decisions[s.data["batch_idx"]]
        assert s.data["mask_total"] == dict.fromkeys(ACTION_HEADS, len(taken))
        assert s.data["mask_hits"] == {
            h: sum(e.data[f"{h}_masked"] for e in taken) for h in ACTION_HEADS
        }
    assert any(hits for s in snapshots for hits in s.data["mask_hits"].values())


# -- Task 5: PPO vitals ----------------------------------------------------------------------


def test_task5_ppo_updates_report_lr_grad_norm_and_update_time(ppo_run: Run) -> None:
    updates = ppo_run.of("PPO_UPDATE_COMPLETED")
    assert len(updates) == 2
    for u in updates:
        assert u.data["lr"] == 3e-4  # the default --lr, read back from the optimizer
        assert math.isfinite(u.data["grad_norm"])
        assert u.data["grad_norm"] > 0
        assert u.data["update_time_ms"] > 0


# -- Task 7: counterfactual coverage and the final-epoch baseline ----------------------------


def test_task7_missing_counterfactuals_are_marked_with_a_reason(ppo_run: Run) -> None:
    cfs = ppo_run.of("COUNTERFACTUAL_COMPUTED")
    missing = [e for e in cfs if not e.data["available"]]
    assert missing, "live seeds that were not blended yet have no baseline"
    assert {e.data["reason"] for e in missing} <= {"not_blended", "missing_baseline"}
    assert all(e.data["contribution"] is None for e in missing)
    measured = [e for e in cfs if e.data["available"]]
    assert measured
    for e in measured:
        assert e.data["contribution"] == pytest.approx(
            e.data["real_accuracy"] - e.data["baseline_accuracy"]
        )


def test_task7_final_epoch_baseline_is_measured_only_on_the_last_epoch(tmp_path: Path) -> None:
    run = train(tmp_path, "ppo", "--n-envs", "2", "--episodes", "2", "--max-epochs", "15",
                "--seed", "6", "--counterfactual", "final-epoch")  # fmt: skip
    cfs = run.of("COUNTERFACTUAL_COMPUTED")
    measured = [e for e in cfs if e.data["available"]]
    assert measured, "a seed was blending on the last epoch"
    assert {e.epoch for e in measured} == {15}
    early = [e for e in cfs if not e.data["available"] and e.data["reason"] == "missing_baseline"]
    assert early
    assert all(e.epoch < 15 for e in early)


# -- Tasks 8 and 9: throughput per env, reward summaries -------------------------------------


def test_task8_throughput_per_env_per_batch(ppo_run: Run) -> None:
    snaps = ppo_run.of("ANALYTICS_SNAPSHOT", "throughput")
    assert sorted((s.data["batch_idx"], s.data["env_id"]) for s in snaps) == [
        (0, 0), (0, 1), (1, 0), (1, 1),
    ]  # fmt: skip
    for s in snaps:
        assert s.data["step_time_ms"] > 0
        assert s.data["fps"] > 0
        assert 0 <= s.data["dataloader_wait_ms"] < s.data["step_time_ms"]


def test_task9_reward_summary_adds_up_the_envs_rewards(ppo_run: Run) -> None:
    summaries = ppo_run.of("ANALYTICS_SNAPSHOT", "reward_summary")
    assert len(summaries) == 4  # one per env per batch
    rewards: dict[tuple[int, int], float] = {}
    for e in ppo_run.of("REWARD_COMPUTED"):
        key = (e.data["episode"] // 2, e.data["env_id"])
        rewards[key] = rewards.get(key, 0.0) + e.data["total_reward"]
    for s in summaries:
        total = sum(s.data["summary"].values())
        assert total == pytest.approx(rewards[(s.data["batch_idx"], s.data["env_id"])])


def test_task9_reward_summaries_come_at_normal_level_without_per_step_events(
    tmp_path: Path,
) -> None:
    run = train(tmp_path, "ppo", "--n-envs", "2", "--episodes", "2", "--max-epochs", "4",
                "--telemetry-level", "normal")  # fmt: skip
    assert len(run.of("ANALYTICS_SNAPSHOT", "reward_summary")) == 2
    assert not run.of("REWARD_COMPUTED")
    assert not run.of("ANALYTICS_SNAPSHOT", "last_action")
