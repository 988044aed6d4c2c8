"""The capture map: where every catalogue field of every event lands in the snapshot.

Paths are dotted; ``name[{field}]`` indexes a dict by the value of a payload field (env and
slot ids), and ``[*]`` stands for each key of a nested record map (the per-slot ``seeds`` of
EPOCH_COMPLETED). A discriminator field (``scope``, ``kind``) maps to ``None``: it selects the
variant rather than being stored. The map is built from the payload catalogue with a rule per
event type, so a field added to the catalogue is captured too, and a test sends a distinct
sentinel in every field and finds each one at its path.
"""

from __future__ import annotations

from esper.leyline import CATALOGUE, DISCRIMINATORS, TelemetryEventType

ET = TelemetryEventType
SEED = "envs[{env_id}].seeds[{slot_id}]"

_PREFIX: dict[tuple[TelemetryEventType, str | None], str] = {
    (ET.TRAINING_STARTED, None): "run_config",
    (ET.TRAINING_COMPLETED, None): "completed",
    (ET.EPOCH_COMPLETED, "env"): "envs[{env_id}]",
    (ET.EPOCH_COMPLETED, "aggregate"): "aggregate",
    (ET.BATCH_EPOCH_COMPLETED, None): "",
    (ET.PPO_UPDATE_COMPLETED, None): "tamiyo",
    (ET.REWARD_COMPUTED, None): "envs[{env_id}].last_reward",
    (ET.SEED_GERMINATED, None): SEED,
    (ET.SEED_STAGE_CHANGED, None): SEED,
    (ET.SEED_GATE_EVALUATED, None): SEED,
    (ET.SEED_FOSSILIZED, None): SEED,
    (ET.SEED_CULLED, None): SEED,
    (ET.COUNTERFACTUAL_COMPUTED, None): f"{SEED}.counterfactual_detail",
    (ET.ANALYTICS_SNAPSHOT, "last_action"): "envs[{env_id}].last_decision",
    (ET.ANALYTICS_SNAPSHOT, "action_distribution"): "action_distribution",
    (ET.ANALYTICS_SNAPSHOT, "throughput"): "envs[{env_id}].throughput",
    (ET.ANALYTICS_SNAPSHOT, "reward_summary"): "envs[{env_id}].reward_summary",
    (ET.ANALYTICS_SNAPSHOT, "mask_hit_rates"): "mask_hit_rates",
    (ET.ANALYTICS_SNAPSHOT, "collectives"): "collectives",
    (ET.GOVERNOR_ROLLBACK, None): "envs[{env_id}].last_rollback",
    (ET.GRADIENT_ANOMALY, None): "last_anomaly",
    (ET.PLATEAU_DETECTED, None): "envs[{env_id}].plateau",
    (ET.CHECKPOINT_SAVED, None): "checkpoint",
    (ET.CHECKPOINT_LOADED, None): "resumed_from",
    (ET.TELEMETRY_WARNING, None): "last_warning",
    (ET.TELEMETRY_LEVEL_CHANGED, None): "last_level_change",
    (ET.TELEMETRY_CLOSED, None): "telemetry_account",
}

_RENAMED: dict[tuple[TelemetryEventType, str | None], dict[str, str]] = {
    (ET.PPO_UPDATE_COMPLETED, None): {"lr": "tamiyo.learning_rate"},
    (ET.BATCH_EPOCH_COMPLETED, None): {
        "total_episodes": "batch_total_episodes",
        "avg_accuracy": "batch_avg_accuracy",
        "rolling_accuracy": "batch_rolling_accuracy",
        "avg_reward": "batch_avg_reward",
    },
    # Gate results are kept together, so the latest gate reads as one record.
    (ET.SEED_GATE_EVALUATED, None): {
        name: f"{SEED}.last_gate.{name}"
        for name in ("gate", "passed", "target_stage", "checks_passed", "checks_failed")
    },
}


def _build() -> dict[tuple[TelemetryEventType, str | None], dict[str, str | None]]:
    out: dict[tuple[TelemetryEventType, str | None], dict[str, str | None]] = {}
    for key, spec in CATALOGUE.items():
        prefix = _PREFIX[key]
        renamed = _RENAMED.get(key, {})
        disc = DISCRIMINATORS.get(key[0])
        paths: dict[str, str | None] = {}
        for f in spec.fields:
            if f.name == disc:
                paths[f.name] = None
                continue
            path = renamed.get(f.name) or (f"{prefix}.{f.name}" if prefix else f.name)
            if f.item_fields:
                # A map of records: each record's fields land in the record at its key.
                paths[f.name] = f"{path}[*]"
                for item in f.item_fields:
                    paths[f"{f.name}[*].{item.name}"] = f"{path}[*].{item.name}"
            else:
                paths[f.name] = path
        out[key] = paths
    return out


CAPTURE: dict[tuple[TelemetryEventType, str | None], dict[str, str | None]] = _build()
"""(event type, variant) -> payload field -> snapshot path (None: the variant selector)."""
