"""Plan 003 (seed telemetry): the 27 / 37 / 54 feature dimensions, the timing rule (gradients
collected after ``backward()`` and before the optimizer step), telemetry synced once per epoch
after validation (in fast mode too), and the review's raw norm, on real training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from esper.kasmina import SLOT_IDS, build_seed
from esper.leyline import Op, SeedStage
from esper.simic.comparison import (
    HeuristicController,
    PolicyController,
    head_to_head_comparison,
    load_iql_model,
    record_heuristic_episodes,
)
from esper.simic.gradient_collector import SeedGradientCollector
from esper.simic.iql import IQL
from esper.tolaria.data import load_task
from esper.tolaria.environment import HOST_WIDTHS, MorphogeneticEnv
from tests.plans.conftest import Run

pytestmark = pytest.mark.slow


def _env(**kwargs: Any) -> MorphogeneticEnv:
    env = MorphogeneticEnv(0, load_task("digits"), seed=1, emit=lambda e: None, **kwargs)
    env.reset(0)
    return env


# -- Feature dimensions ----------------------------------------------------------------------


def test_recorded_episodes_have_27_features_or_37_with_real_seed_telemetry() -> None:
    plain = record_heuristic_episodes(seeds=[3], max_epochs=20)  # germinates at epoch 10
    rich = record_heuristic_episodes(seeds=[3], max_epochs=20, use_telemetry=True)
    assert {len(o) for o in plain.obs} == {27}
    assert {len(o) for o in rich.obs} == {37}
    assert [o[:27] for o in rich.obs] == plain.obs  # telemetry only appends
    seen = [o[27:] for o in rich.obs if o[27 + 7] > 0.0]  # stage feature: a live seed
    assert seen, "a seed was alive for some decisions"
    assert any(f[0] > 0.0 for f in seen), "its real gradient norm, not zero padding"


@pytest.mark.parametrize(("dim", "kind"), [(27, "none"), (37, "seed"), (54, "full")])
def test_a_model_of_each_dimension_loads_and_plays_a_comparison(
    tmp_path: Path, dim: int, kind: str
) -> None:
    path = tmp_path / f"iql{dim}.pt"
    IQL(dim).save(path)
    model, use_telemetry, telemetry_type = load_iql_model(path)
    assert (telemetry_type, use_telemetry) == (kind, dim != 27)
    rows = head_to_head_comparison(
        [HeuristicController(), PolicyController(model.act)], seeds=[3], max_epochs=20,
        use_telemetry=use_telemetry, telemetry_type=telemetry_type, emit=lambda e: None,
    )  # fmt: skip
    assert [r.decisions for r in rows] == [19, 19]
    if kind == "seed":
        heuristic = rows[0]
        assert 0 < heuristic.seed_telemetry_decisions <= heuristic.decisions
    else:
        assert [r.seed_telemetry_decisions for r in rows] == [0, 0]


# -- The timing rule -------------------------------------------------------------------------


def test_gradients_are_collected_after_backward_and_before_the_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env()
    env.run_epoch(1, 0, 6)
    assert env.apply(Op.GERMINATE, "mid", "conv_light")
    seed_opt = env.model.slot("mid").optimizer
    assert seed_opt is not None
    log: list[str] = []
    env.optimizer.register_step_pre_hook(lambda *_: log.append("host step"))
    seed_opt.register_step_pre_hook(lambda *_: log.append("seed step"))
    real_backward = torch.autograd.backward
    real_stats = SeedGradientCollector.stats

    def backward(*args: Any, **kwargs: Any) -> None:
        log.append("backward")
        real_backward(*args, **kwargs)

    def stats(self: SeedGradientCollector, parameters: Any) -> torch.Tensor | None:
        out = real_stats(self, parameters)
        log.append("collect" if out is not None else "collect nothing")
        return out

    monkeypatch.setattr(torch.autograd, "backward", backward)
    monkeypatch.setattr(SeedGradientCollector, "stats", stats)
    env.run_epoch(2, 0, 6)
    batches = -(-env.task.train_x.shape[0] // env.config.batch_size)
    # Per batch: backward, the host's and the seed's gradients collected while present (a
    # collection after zero_grad would find none), then the optimizer steps.
    assert log == ["backward", "collect", "collect", "host step", "seed step"] * batches


# -- Syncing, once per epoch after validation, fast mode included ----------------------------


@pytest.mark.parametrize("fast_mode", [False, True])
def test_seed_telemetry_is_synced_after_validation_every_epoch(fast_mode: bool) -> None:
    env = _env(fast_mode=fast_mode)
    env.run_epoch(1, 0, 8)
    env.apply(Op.GERMINATE, "late", "norm")
    state = env.model.slot("late").state
    assert state is not None
    assert state.telemetry.layer_id == "late"
    for epoch in range(2, 6):
        before = state.telemetry.captured_at
        result = env.run_epoch(epoch, 0, 8)
        t = state.telemetry
        assert t.captured_at > before
        assert (t.epoch, t.max_epochs) == (epoch, 8)
        assert t.accuracy == result.val_accuracy == state.metrics.current_val_accuracy
        assert t.stage == state.stage.value
        assert t.epochs_in_stage == state.metrics.epochs_in_current_stage
        assert t.accuracy_delta == pytest.approx(state.metrics.improvement_since_stage_start)
        grads = result.seed_gradients["late"]
        assert (t.gradient_norm, t.gradient_health) == (
            grads["gradient_norm"],
            grads["gradient_health"],
        )
    assert state.stage in (SeedStage.TRAINING, SeedStage.BLENDING)


# -- The review's raw norm -------------------------------------------------------------------


def test_the_raw_total_norm_is_kept_beside_the_plans_norm(ppo_run: Run) -> None:
    records = [
        (slot_id, record)
        for e in ppo_run.of("EPOCH_COMPLETED")
        if e.data["scope"] == "env"
        for slot_id, record in e.data["seeds"].items()
        if record["stage"] not in ("FOSSILIZED", "CULLED", "EMBARGOED", "RESETTING")
        and record["gradient_total_norm"] > 0
    ]
    assert records
    widths = HOST_WIDTHS["digits"]
    for slot_id, r in records:
        seed = build_seed(r["blueprint_id"], widths[SLOT_IDS.index(slot_id)])
        tensors = len(list(seed.parameters()))
        # The plan's gradient_norm is the total over the number of gradient tensors.
        assert r["gradient_norm"] == pytest.approx(r["gradient_total_norm"] / tensors)
