"""Plan 004 (telemetry gap remediation): every field of its tables is emitted by a real run
and captured by the Sanctum aggregator, and ``TamiyoState`` has the fields of its appendix.

The tables are copied from the plan (fields listed as gaps, and those it lists as already
captured); for each event of a listed type, every field is in the payload, and right after
the aggregator takes the event the snapshot holds the field's value at the path the capture
map declares.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from esper.karn.sanctum import CAPTURE, SanctumAggregator, resolve
from esper.karn.sanctum.schema import TamiyoState
from esper.leyline import DISCRIMINATORS, TelemetryEvent, TelemetryEventType
from tests.plans.conftest import Run

pytestmark = pytest.mark.slow
ET = TelemetryEventType

SEED_IDS = ("slot_id", "env_id")
# fmt: off
TABLES: dict[tuple[TelemetryEventType, str | None], tuple[str, ...]] = {
    (ET.TRAINING_STARTED, None): (
        "run_id", "task", "max_epochs", "n_envs", "policy_device", "env_devices", "host_params",
        "slot_ids", "seed", "topology", "task_type", "reward_mode", "n_episodes",
        "use_telemetry", "state_dim", "env_device_counts", "env_device_map_strategy",
        "resume_path", "lr", "clip_ratio", "entropy_coef", "entropy_anneal", "gpu_preload",
        "dataloader", "param_budget",
    ),
    (ET.EPOCH_COMPLETED, "env"): (
        "env_id", "inner_epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
        "seeds",
    ),
    (ET.EPOCH_COMPLETED, "aggregate"): (
        "inner_epoch", "batch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
        "n_envs", "skipped_update", "plateau_detected",
    ),
    (ET.REWARD_COMPUTED, None): ("episode",),
    (ET.PPO_UPDATE_COMPLETED, None): (
        "policy_loss", "value_loss", "entropy", "kl_divergence", "clip_fraction", "ratio_mean",
        "ratio_min", "ratio_max", "ratio_std", "nan_grad_count", "dead_layers",
        "exploding_layers", "lr", "inner_epoch", "batch", "train_steps", "early_stop_epoch",
        "avg_accuracy", "avg_reward", "rolling_avg_accuracy", "grad_norm", "update_time_ms",
        "head_slot_entropy", "head_slot_grad_norm", "head_blueprint_entropy",
        "head_blueprint_grad_norm",
    ),
    (ET.BATCH_EPOCH_COMPLETED, None): (
        "episodes_completed", "batch_idx", "total_episodes", "start_episode",
        "requested_episodes", "env_accuracies", "avg_accuracy", "rolling_accuracy", "avg_reward",
    ),
    (ET.SEED_GERMINATED, None): (*SEED_IDS, "blueprint_id", "seed_id", "params"),
    (ET.SEED_STAGE_CHANGED, None): (*SEED_IDS, "from_stage", "to_stage", "epochs_total",
                                    "counterfactual"),
    (ET.SEED_FOSSILIZED, None): (
        *SEED_IDS, "params_added", "blueprint_id", "seed_id", "improvement", "blending_delta",
        "counterfactual", "epochs_total", "epochs_in_stage",
    ),
    (ET.SEED_CULLED, None): (
        *SEED_IDS, "reason", "auto_culled", "blueprint_id", "seed_id", "improvement",
        "blending_delta", "counterfactual", "epochs_total", "epochs_in_stage",
    ),
}
# fmt: on


def _key(e: TelemetryEvent) -> tuple[TelemetryEventType, str | None]:
    disc = DISCRIMINATORS.get(e.event_type)
    return (e.event_type, None if disc is None else e.data[disc])


def _read(snapshot: Any, path: str, data: dict[str, Any]) -> Any:
    parent, name, kind = resolve(snapshot, path, data)
    if kind == "index" or isinstance(parent, dict):
        return parent[name]
    return getattr(parent, name)


def _same(captured: Any, emitted: Any) -> bool:
    if isinstance(emitted, float) and math.isnan(emitted):
        return isinstance(captured, float) and math.isnan(captured)
    return bool(captured == emitted)


def test_every_tabled_field_is_emitted_and_captured_on_a_real_run(ppo_run: Run) -> None:
    agg = SanctumAggregator()
    seen: dict[tuple[TelemetryEventType, str | None], int] = dict.fromkeys(TABLES, 0)
    for e in ppo_run.events:
        agg.process_event(e)
        key = _key(e)
        if key not in TABLES:
            continue
        seen[key] += 1
        if key[0] is ET.SEED_STAGE_CHANGED and e.data["to_stage"] == "DORMANT":
            continue  # the slot is empty again: the aggregator forgets its seed
        snap = agg.get_snapshot()
        for name in TABLES[key]:
            assert name in e.data, f"{key[0].name}: {name} not emitted"
            path = CAPTURE[key][name]
            assert path is not None, f"{key[0].name}: {name} not captured"
            if name == "seeds":
                for slot_id, record in e.data["seeds"].items():
                    for field, value in record.items():
                        concrete = CAPTURE[key][f"seeds[*].{field}"]
                        assert concrete is not None
                        got = _read(snap, concrete.replace("[*]", f"[{slot_id}]"), e.data)
                        assert _same(got, value), (slot_id, field)
                continue
            assert _same(_read(snap, path, e.data), e.data[name]), f"{key[0].name}: {name}"
    assert all(seen.values()), {k[0].name: n for k, n in seen.items() if not n}


# fmt: off
APPENDIX: dict[str, Any] = {
    # TamiyoState fields (the appendix's "current" list) and its recommended additions.
    "entropy": 0.0, "clip_fraction": 0.0, "kl_divergence": 0.0, "explained_variance": 0.0,
    "policy_loss": 0.0, "value_loss": 0.0, "learning_rate": 0.0, "entropy_coef": 0.0,
    "ratio_mean": 0.0, "ratio_min": 0.0, "ratio_max": 0.0, "ratio_std": 0.0,
    "dead_layers": 0, "exploding_layers": 0, "nan_grad_count": 0,
    "layer_gradient_health": 0.0, "entropy_collapsed": False,
    "grad_norm": 0.0, "update_time_ms": 0.0, "early_stop_epoch": None,
    "head_slot_entropy": 0.0, "head_slot_grad_norm": 0.0, "head_blueprint_entropy": 0.0,
    "head_blueprint_grad_norm": 0.0,
}
# fmt: on


def test_tamiyo_state_has_the_appendixs_fields_and_defaults() -> None:
    t = TamiyoState()
    fields = {f.name for f in dataclasses.fields(TamiyoState)}
    assert set(APPENDIX) <= fields
    assert {name: getattr(t, name) for name in APPENDIX} == APPENDIX


def test_tamiyo_state_after_a_real_run_holds_the_last_updates_values(ppo_run: Run) -> None:
    agg = SanctumAggregator()
    for e in ppo_run.events:
        agg.process_event(e)
    t = agg.get_snapshot().tamiyo
    last = ppo_run.of("PPO_UPDATE_COMPLETED")[-1].data
    assert t.learning_rate == last["lr"] == 3e-4
    assert t.lr == t.learning_rate  # the earlier name still reads
    assert 0.0 <= t.layer_gradient_health <= 1.0
    assert t.layer_gradient_health == pytest.approx(
        sum(last["layer_gradient_health_by_layer"].values())
        / len(last["layer_gradient_health_by_layer"])
    )
    for name in APPENDIX:
        emitted = last["lr"] if name == "learning_rate" else last[name]
        assert getattr(t, name) == emitted, name
