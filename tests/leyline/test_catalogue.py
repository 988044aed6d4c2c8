"""The payload catalogue: the contract's fields, validation, and the generated docs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from esper.leyline import (
    ACTION_HEADS,
    CATALOGUE,
    REWARD_COMPONENTS,
    SEED_FIELDS,
    FieldType,
    PayloadError,
    TelemetryEventType,
    allowed_values,
    make_event,
    payload_fits,
    render_events_markdown,
    validate_payload,
)

ET = TelemetryEventType
DOCS = Path(__file__).resolve().parents[2] / "docs" / "EVENTS.md"

SEED_COMMON = (
    "env_id device slot_id seed_id blueprint_id alpha inner_epoch global_epoch epochs_total "
    "epochs_in_stage"
).split()

# The minimum fields of SPEC 3.3, written out here independently of the catalogue.
CONTRACT: dict[tuple[TelemetryEventType, str | None], list[str]] = {
    (ET.TRAINING_STARTED, None): (
        "run_id mode task task_type topology max_epochs n_envs n_episodes seed policy_device "
        "env_devices env_device_counts env_device_map_strategy host_params slot_ids reward_mode "
        "use_telemetry telemetry_level state_dim resume_path lr clip_ratio entropy_coef "
        "entropy_anneal gpu_preload dataloader param_budget"
    ).split(),
    (ET.EPOCH_COMPLETED, "env"): (
        "env_id inner_epoch train_loss train_accuracy val_loss val_accuracy host_grad_norm seeds"
    ).split(),
    (ET.EPOCH_COMPLETED, "aggregate"): (
        "inner_epoch batch train_loss train_accuracy val_loss val_accuracy n_envs skipped_update "
        "plateau_detected"
    ).split(),
    (ET.BATCH_EPOCH_COMPLETED, None): (
        "batch_idx episodes_completed total_episodes start_episode requested_episodes "
        "env_accuracies avg_accuracy rolling_accuracy avg_reward"
    ).split(),
    (ET.PPO_UPDATE_COMPLETED, None): (
        "policy_loss value_loss entropy kl_divergence clip_fraction explained_variance lr "
        "entropy_coef ratio_mean ratio_min ratio_max ratio_std grad_norm update_time_ms "
        "nan_grad_count dead_layers exploding_layers layer_gradient_health entropy_collapsed "
        "inner_epoch batch train_steps early_stop_epoch avg_accuracy avg_reward "
        "rolling_avg_accuracy"
    ).split()
    + [f"head_{h}_{m}" for h in ("op", "slot", "blueprint", "blend")
       for m in ("entropy", "grad_norm")],
    (ET.REWARD_COMPUTED, None): (
        "env_id episode epoch action action_success total_reward val_acc acc_delta param_ratio "
        "seed_stage base_acc_delta bounded_attribution compute_rent seed_contribution "
        "counterfactual blending_warning probation_warning fossilize_bonus cull_penalty "
        "terminal_bonus"
    ).split(),
    (ET.SEED_GERMINATED, None): [*SEED_COMMON, "params"],
    (ET.SEED_STAGE_CHANGED, None): [
        *SEED_COMMON, "from_stage", "to_stage", "accuracy_delta", "counterfactual",
    ],
    (ET.SEED_GATE_EVALUATED, None): [
        *SEED_COMMON, "gate", "passed", "target_stage", "checks_passed", "checks_failed",
    ],
    (ET.SEED_FOSSILIZED, None): [
        *SEED_COMMON, "improvement", "blending_delta", "counterfactual", "params_added",
    ],
    (ET.SEED_CULLED, None): [
        *SEED_COMMON, "reason", "auto_culled", "improvement", "blending_delta", "counterfactual",
    ],
    (ET.GOVERNOR_ROLLBACK, None): (
        "env_id device reason loss_at_panic loss_threshold consecutive_panics seeds_culled"
    ).split(),
    (ET.GRADIENT_ANOMALY, None): "scope kind env_id slot_id value threshold".split(),
    (ET.COUNTERFACTUAL_COMPUTED, None): (
        "env_id slot_id available reason real_accuracy baseline_accuracy contribution"
    ).split(),
    (ET.ANALYTICS_SNAPSHOT, "last_action"): (
        "env_id epoch op slot_id blueprint_id blend_id op_masked slot_masked blueprint_masked "
        "blend_masked action_success"
    ).split(),
    (ET.ANALYTICS_SNAPSHOT, "action_distribution"): (
        "batch_idx episodes_completed action_counts success_counts"
    ).split(),
    (ET.ANALYTICS_SNAPSHOT, "throughput"): (
        "env_id batch_idx episodes_completed step_time_ms fps dataloader_wait_ms"
    ).split(),
    (ET.ANALYTICS_SNAPSHOT, "reward_summary"): "env_id batch_idx summary".split(),
    (ET.ANALYTICS_SNAPSHOT, "mask_hit_rates"): (
        "batch_idx episodes_completed mask_hits mask_total"
    ).split(),
    (ET.TELEMETRY_WARNING, None): ["reason", "detail"],
}  # fmt: skip


@pytest.mark.parametrize("key", list(CONTRACT), ids=lambda k: f"{k[0].name}:{k[1]}")
def test_catalogue_declares_every_contract_field(
    key: tuple[TelemetryEventType, str | None],
) -> None:
    declared = {f.name for f in CATALOGUE[key].fields}
    missing = set(CONTRACT[key]) - declared
    assert not missing, f"{key}: missing {sorted(missing)}"


def test_every_event_type_has_a_payload_spec() -> None:
    assert {t for t, _ in CATALOGUE} == set(TelemetryEventType)


def test_every_field_has_a_meaning_and_no_spec_repeats_a_field() -> None:
    for spec in CATALOGUE.values():
        names = [f.name for f in spec.fields]
        assert len(names) == len(set(names)), spec.title
        assert all(f.meaning for f in spec.fields), spec.title


def test_seed_fields_head_fields_and_reward_components_are_shared_constants() -> None:
    assert [f.name for f in SEED_FIELDS] == SEED_COMMON
    assert ACTION_HEADS == ("op", "slot", "blueprint", "blend")
    reward = {f.name for f in CATALOGUE[(ET.REWARD_COMPUTED, None)].fields}
    assert set(REWARD_COMPONENTS) <= reward


def _sample(ftype: FieldType) -> object:
    return {
        FieldType.FLOAT: 1.5, FieldType.INT: 3, FieldType.BOOL: True, FieldType.STR: "x",
        FieldType.LIST: [], FieldType.DICT: {},
    }[ftype]  # fmt: skip


def _full_payload(key: tuple[TelemetryEventType, str | None]) -> dict[str, object]:
    spec = CATALOGUE[key]
    data = {f.name: f.allowed[0] if f.allowed else _sample(f.type) for f in spec.fields}
    if key[1] is not None:
        data["kind" if key[0] is ET.ANALYTICS_SNAPSHOT else "scope"] = key[1]
    return data


@pytest.mark.parametrize("key", list(CATALOGUE), ids=lambda k: f"{k[0].name}:{k[1]}")
def test_make_event_accepts_a_complete_payload(key: tuple[TelemetryEventType, str | None]) -> None:
    event = make_event(key[0], _full_payload(key))
    assert validate_payload(event.event_type, event.data).key == key


def test_make_event_names_a_missing_field() -> None:
    data = _full_payload((ET.SEED_CULLED, None))
    del data["reason"]
    with pytest.raises(PayloadError, match=r"SEED_CULLED: missing required field 'reason'"):
        make_event(ET.SEED_CULLED, data)


def test_make_event_names_an_unknown_field() -> None:
    data = _full_payload((ET.SEED_CULLED, None)) | {"reasn": "typo"}
    with pytest.raises(PayloadError, match=r"unknown field\(s\) \['reasn'\]"):
        make_event(ET.SEED_CULLED, data)


def test_make_event_names_a_wrong_type_and_a_null_in_a_required_field() -> None:
    data = _full_payload((ET.GOVERNOR_ROLLBACK, None)) | {"env_id": "zero"}
    with pytest.raises(PayloadError, match=r"field 'env_id' expects int, got str"):
        make_event(ET.GOVERNOR_ROLLBACK, data)
    data = _full_payload((ET.GOVERNOR_ROLLBACK, None)) | {"device": None}
    with pytest.raises(PayloadError, match=r"field 'device' must not be null"):
        make_event(ET.GOVERNOR_ROLLBACK, data)


def test_nan_is_a_legal_float_but_not_an_int() -> None:
    data = _full_payload((ET.GOVERNOR_ROLLBACK, None)) | {"loss_at_panic": math.nan}
    assert math.isnan(make_event(ET.GOVERNOR_ROLLBACK, data).data["loss_at_panic"])
    with pytest.raises(PayloadError, match="seeds_culled"):
        make_event(ET.GOVERNOR_ROLLBACK, data | {"seeds_culled": math.nan})


@pytest.mark.parametrize(
    ("event_type", "field", "values"),
    [
        (ET.GRADIENT_ANOMALY, "scope", ("policy", "host", "seed")),
        (ET.GRADIENT_ANOMALY, "kind", ("exploding", "vanishing", "nan", "loss_spike")),
        (ET.GOVERNOR_ROLLBACK, "reason", ("nan_loss", "inf_loss", "divergence", "manual")),
        (ET.SEED_CULLED, "reason", ("controller", "gate_failed", "blend_regression",
                                    "probation_timeout", "rollback")),
        (ET.TRAINING_COMPLETED, "status", ("completed", "failed", "interrupted")),
    ],
)  # fmt: skip
def test_a_closed_field_takes_only_its_declared_values(
    event_type: TelemetryEventType, field: str, values: tuple[str, ...]
) -> None:
    assert allowed_values(event_type, field) == values
    data = _full_payload((event_type, None))
    for value in values:
        validate_payload(event_type, data | {field: value})
        assert payload_fits(event_type, data | {field: value})
    bad = data | {field: "something_else"}
    assert not payload_fits(event_type, bad)  # the compiled check is never looser
    with pytest.raises(PayloadError, match=rf"field '{field}' is 'something_else', not one of"):
        validate_payload(event_type, bad)


def test_unknown_variant_is_named() -> None:
    with pytest.raises(PayloadError, match=r"unknown kind='nope'"):
        make_event(ET.ANALYTICS_SNAPSHOT, {"kind": "nope"})


def test_nested_seed_records_are_validated() -> None:
    spec = CATALOGUE[(ET.EPOCH_COMPLETED, "env")]
    data = _full_payload(spec.key)
    record = {f.name: _sample(f.type) for f in spec.field("seeds").item_fields}
    make_event(ET.EPOCH_COMPLETED, data | {"seeds": {"mid": record}})
    del record["alpha"]
    with pytest.raises(PayloadError, match=r"seeds\['mid'\]: missing required field 'alpha'"):
        make_event(ET.EPOCH_COMPLETED, data | {"seeds": {"mid": record}})


def test_docs_events_md_is_what_the_catalogue_generates() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_events_markdown(), (
        "docs/EVENTS.md is stale: run 'esper docs'"
    )
