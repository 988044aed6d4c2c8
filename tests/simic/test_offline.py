"""Offline comparison: features with seed telemetry, IQL checkpoints, record -> train -> compare."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from esper.leyline import SeedStage, SeedTelemetry, TelemetryEvent, TelemetryEventType
from esper.scripts import cli
from esper.simic.comparison import (
    HeuristicController,
    PolicyController,
    head_to_head_comparison,
    load_iql_model,
    offline_action_mask,
    record_heuristic_episodes,
    snapshot_to_features,
)
from esper.simic.episodes import N_ACTIONS, TrainingSnapshot, action_of, load_dataset
from esper.simic.features import FEATURE_SETS, obs_to_base_features, observe, snapshot_features
from esper.simic.iql import IQL
from esper.tolaria.data import load_task
from esper.tolaria.environment import MorphogeneticEnv


def _snapshot() -> TrainingSnapshot:
    return TrainingSnapshot(
        epoch=5, global_step=500, train_loss=0.4, val_loss=0.5, loss_delta=-0.1,
        train_accuracy=85.0, val_accuracy=80.0, accuracy_delta=2.0, plateau_epochs=3,
        best_val_accuracy=81.0, best_val_loss=0.45, loss_history_5=(0.9, 0.8, 0.7, 0.6, 0.5),
        accuracy_history_5=(60.0, 70.0, 75.0, 78.0, 80.0), has_active_seed=True,
        seed_stage=int(SeedStage.BLENDING), seed_epochs_in_stage=2, seed_alpha=0.5,
        seed_improvement=5.0, available_slots=1,
    )  # fmt: skip


def test_base_features_are_27_in_the_snapshots_field_order() -> None:
    f = obs_to_base_features(_snapshot())
    assert len(f) == 27
    assert f[:11] == pytest.approx([0.1, 0.05, 0.08, 0.1, -0.1, 0.85, 0.8, 0.2, 0.3, 0.81, 0.09])
    assert f[11:16] == pytest.approx([0.18, 0.16, 0.14, 0.12, 0.1])  # val losses / 5
    assert f[16:21] == pytest.approx([0.6, 0.7, 0.75, 0.78, 0.8])  # val accuracies / 100
    assert f[21:27] == pytest.approx([1.0, 0.4, 0.04, 0.5, 0.5, 1 / 3])  # focus seed, free slots


def test_base_features_take_the_plans_dict_form_and_never_a_non_finite_value() -> None:
    snap = _snapshot()
    as_dict = {name: getattr(snap, name) for name in TrainingSnapshot.__dataclass_fields__}
    assert obs_to_base_features(as_dict) == obs_to_base_features(snap)
    as_dict |= {"train_loss": math.nan, "val_loss": math.inf, "loss_delta": math.nan}
    f = obs_to_base_features(as_dict)
    assert all(math.isfinite(x) for x in f)
    assert (f[2], f[3], f[4]) == (1.0, 1.0, 0.0)  # a broken loss reads as the worst, no change


def test_seed_telemetry_appends_its_10_features() -> None:
    t = SeedTelemetry(seed_id="s", gradient_norm=5.0, gradient_health=0.7, stage=4, alpha=0.5)
    f = snapshot_to_features(_snapshot(), use_telemetry=True, seed_telemetry=t)
    assert len(f) == 37
    assert f[27:] == t.to_features()
    assert len(snapshot_to_features(_snapshot())) == 27


def test_asking_for_telemetry_without_any_gives_zeros_and_a_warning() -> None:
    with pytest.warns(UserWarning, match="no seed_telemetry"):
        f = snapshot_to_features(_snapshot(), use_telemetry=True)
    assert f[27:] == [0.0] * 10


@pytest.mark.parametrize(("dim", "kind", "uses"), [(27, "none", False), (37, "seed", True),
                                                    (54, "full", True)])  # fmt: skip
def test_load_iql_model_infers_the_telemetry_type(
    tmp_path: Path, dim: int, kind: str, uses: bool
) -> None:
    path = tmp_path / "m.pt"
    IQL(dim).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iql, use_telemetry, telemetry_type = load_iql_model(path)
    assert (iql.state_dim, use_telemetry, telemetry_type) == (dim, uses, kind)


def test_an_odd_state_dimension_is_unknown_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    IQL(13).save(path)
    with pytest.warns(UserWarning, match="state dimension 13 matches no known feature set"):
        _, use_telemetry, telemetry_type = load_iql_model(path)
    assert (use_telemetry, telemetry_type) == (False, "unknown")


class Payload:
    """An arbitrary object: weights_only loading refuses it."""


def test_load_iql_model_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_iql_model(path)


def test_offline_mask_allows_only_possible_actions() -> None:
    env = MorphogeneticEnv(0, load_task("digits"), emit=lambda e: None)
    mask = offline_action_mask(env)
    allowed = {action_of(i) for i in range(N_ACTIONS) if mask[i]}
    assert {op.name for op, _ in allowed} == {"WAIT", "GERMINATE"}  # nothing to cull or fossilize
    assert len([1 for op, _ in allowed if op.name == "WAIT"]) == 1


@pytest.mark.slow
def test_record_train_compare_end_to_end(tmp_path: Path) -> None:
    data = record_heuristic_episodes(seeds=[1], max_epochs=14, use_telemetry=True)
    assert len(data) == 13  # one decision per epoch but the last
    assert all(len(o) == 37 for o in data.obs)
    assert data.dones[-1] is True
    path = tmp_path / "offline.pt"
    data.save(path)
    loaded = load_dataset(path)
    iql = IQL(37)
    losses = iql.train_offline(loaded, steps=50)
    assert all(math.isfinite(v) for v in losses.values())
    iql.save(tmp_path / "iql.pt")
    model, use_telemetry, _ = load_iql_model(tmp_path / "iql.pt")
    events: list[TelemetryEvent] = []
    rows = head_to_head_comparison(
        [HeuristicController(), PolicyController(model.act)], seeds=[2], max_epochs=14,
        use_telemetry=use_telemetry, emit=events.append,
    )  # fmt: skip
    assert [r.name for r in rows] == ["heuristic", "iql"]
    assert all(0 < r.final_accuracy <= 100 for r in rows)
    epochs = [e for e in events if e.event_type is TelemetryEventType.EPOCH_COMPLETED]
    assert len(epochs) == 28  # both controllers emitted their runs' telemetry


@pytest.mark.slow
def test_esper_offline_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.pt", tmp_path / "m.pt"
    assert (
        cli.main(["offline", "record", "--seeds", "1", "--max-epochs", "6", "--out", str(data)])
        == 0
    )
    assert (
        cli.main(["offline", "train", "--data", str(data), "--steps", "20", "--out", str(model)])
        == 0
    )
    assert (
        cli.main(["offline", "compare", "--model", str(model), "--seeds", "3", "--max-epochs", "6"])
        == 0
    )
    out = capsys.readouterr().out
    assert "27 features (seed telemetry: none)" in out
    assert "| heuristic |" in out
    assert "| iql |" in out


def test_compare_refuses_a_model_of_no_known_feature_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "odd.pt"
    IQL(13).save(model)
    assert cli.main(["offline", "compare", "--model", str(model), "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert f"--model {model}: the model reads 13 features" in err
    assert "Warning" not in err  # said once, as the error


def test_every_named_feature_set_is_as_long_as_its_encoder_makes_it() -> None:
    env = MorphogeneticEnv(0, load_task("digits"), emit=lambda e: None)
    result = env.run_epoch(1, 0, 4)
    ppo = observe(env, result, previous_accuracy=0.0, best_accuracy=result.val_accuracy,
                  plateau=False, param_budget=60_000)  # fmt: skip
    assert len(ppo) == FEATURE_SETS["ppo"].dim == 58
    seed = SeedTelemetry(seed_id="s")
    for name in ("none", "seed", "full"):
        features = snapshot_features(_snapshot(), name, seed)
        assert len(features) == FEATURE_SETS[name].dim
        assert all(math.isfinite(x) for x in features)
    assert set(FEATURE_SETS) == {"ppo", "none", "seed", "full"}
    with pytest.raises(ValueError, match="no snapshot feature set 'ppo'"):
        snapshot_features(_snapshot(), "ppo")
