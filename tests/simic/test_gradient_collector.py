"""SeedGradientCollector: vanishing and exploding detection, one host sync per call."""

from __future__ import annotations

import math

import pytest
import torch

from esper.simic.gradient_collector import (
    SeedGradientCollector,
    collect_seed_gradients,
    gradient_anomaly,
)


def _params(*grads: float) -> list[torch.nn.Parameter]:
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.full((4,), g)
        out.append(p)
    return out


def test_healthy_gradients() -> None:
    r = collect_seed_gradients(_params(0.1, 0.2))
    total = math.sqrt(4 * 0.01 + 4 * 0.04)
    assert r["total_norm"] == pytest.approx(total)
    assert r["gradient_norm"] == pytest.approx(total / 2)  # plan 003: over the tensor count
    assert r["gradient_health"] == 1.0
    assert not r["has_vanishing"]
    assert not r["has_exploding"]


def test_one_dead_tensor_is_flagged_among_healthy_ones() -> None:
    r = collect_seed_gradients(_params(1e-10, 0.5, 0.5, 0.5))
    assert r["has_vanishing"]
    assert not r["has_exploding"]
    assert r["gradient_health"] == pytest.approx(1 - 0.5 * 1 / 4)
    assert r["min_tensor_norm"] == pytest.approx(2e-10)  # the norm the threshold judged


def test_all_vanishing_gradients() -> None:
    r = collect_seed_gradients(_params(1e-10, 1e-10))
    assert r["has_vanishing"]
    assert r["gradient_health"] == 0.5
    assert not r["has_exploding"]


def test_exploding_gradients_are_detected_and_the_raw_norms_are_kept() -> None:
    r = collect_seed_gradients(_params(1000.0, 0.1))
    assert r["has_exploding"]
    assert r["total_norm"] == pytest.approx(math.hypot(2000.0, 0.2))  # raw, not clamped
    assert r["gradient_norm"] == pytest.approx(r["total_norm"] / 2)
    assert r["max_tensor_norm"] == pytest.approx(2000.0)
    assert r["gradient_health"] == pytest.approx(1 - 0.8 * 1 / 2)


def test_health_is_clamped_to_zero() -> None:
    r = SeedGradientCollector(vanishing_threshold=1.0, exploding_threshold=1.0).collect(
        _params(1e-3, 10.0, 10.0)
    )
    # 1 - 0.5 * 1/3 - 0.8 * 2/3 = 0.3; every tensor exploding: 1 - 0.8 = 0.2; never below 0
    assert r["gradient_health"] == pytest.approx(0.3)
    r = SeedGradientCollector(vanishing_threshold=1e-7, exploding_threshold=1e-3).collect(
        _params(1.0, 1.0)
    )
    assert r["gradient_health"] == pytest.approx(0.2)


def test_non_finite_gradients_count_as_exploding() -> None:
    r = collect_seed_gradients(_params(math.nan, 0.1))
    assert r["has_exploding"]
    assert r["has_nonfinite"]
    assert r["gradient_health"] == pytest.approx(1 - 0.8 * 1 / 2)
    assert r["max_tensor_norm"] == pytest.approx(0.2)  # the largest finite norm


def test_thresholds_are_configurable_and_no_grads_is_healthy() -> None:
    assert SeedGradientCollector(exploding_threshold=0.5).collect(_params(1.0))["has_exploding"]
    assert (
        SeedGradientCollector().collect([torch.nn.Parameter(torch.zeros(2))])["gradient_health"]
        == 1.0
    )


def _plan_loop(params: list[torch.nn.Parameter], vt: float, et: float) -> dict[str, float | bool]:
    """Plan 003's own per-parameter loop (Task 3), the reference for the fused version."""
    total_norm, n_params, n_vanishing, n_exploding = 0.0, 0, 0, 0
    for param in params:
        if param.grad is None:
            continue
        param_norm = param.grad.norm().item()
        total_norm += param_norm**2
        n_params += 1
        n_vanishing += param_norm < vt
        n_exploding += param_norm > et
    health = 1.0 - n_vanishing / n_params * 0.5 - n_exploding / n_params * 0.8
    return {
        "gradient_norm": (total_norm**0.5) / n_params,
        "gradient_health": max(0.0, min(1.0, health)),
        "has_vanishing": n_vanishing > 0,
        "has_exploding": n_exploding > 0,
    }


@pytest.mark.parametrize("scale", [1.0, 1e-9, 1e4])
def test_matches_the_plans_per_parameter_loop(scale: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(60)])
    (model(torch.randn(8, 16)).sum() * scale).backward()
    with torch.no_grad():  # a few dead tensors among live ones
        for layer in list(model)[::7]:
            layer.bias.grad.mul_(1e-12)  # type: ignore[union-attr]
    params = list(model.parameters())
    r = collect_seed_gradients(params)
    loop = _plan_loop(params, 1e-7, 100.0)
    assert r["gradient_norm"] == pytest.approx(loop["gradient_norm"], rel=1e-5)
    assert r["gradient_health"] == pytest.approx(loop["gradient_health"])
    flags = (loop["has_vanishing"], loop["has_exploding"])
    assert (r["has_vanishing"], r["has_exploding"]) == flags


def test_collect_synchronises_with_the_host_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"tolist": 0, "item": 0}
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self: torch.Tensor) -> object:
        calls["tolist"] += 1
        return real_tolist(self)

    def item(self: torch.Tensor) -> object:
        calls["item"] += 1
        return real_item(self)

    params = _params(*([0.1] * 120))
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    SeedGradientCollector().collect(params)
    assert calls == {"tolist": 1, "item": 0}


def test_merge_keeps_the_worst_step_and_any_nan() -> None:
    c = SeedGradientCollector()
    a = c.stats(_params(1.0))
    b = c.stats(_params(500.0))
    merged = c.merge(a, b)
    assert merged is not None
    assert c.summarize(merged.tolist())["has_exploding"]
    nan = c.merge(a, c.stats(_params(math.nan)))
    assert nan is not None
    assert c.summarize(nan.tolist())["has_nonfinite"]


def _anomaly(*grads: float) -> dict[str, object] | None:
    return gradient_anomaly(
        "seed", collect_seed_gradients(_params(*grads)), vanishing_threshold=1e-7,
        exploding_threshold=100.0, env_id=1, slot_id="mid",
    )  # fmt: skip


def test_one_anomaly_rule_worst_first_with_the_norm_it_judged() -> None:
    assert _anomaly(0.1, 0.2) is None
    assert _anomaly(1e-10, 0.2) == {
        "scope": "seed", "kind": "vanishing", "env_id": 1, "slot_id": "mid",
        "value": pytest.approx(2e-10), "threshold": 1e-7,
    }  # fmt: skip
    exploding = _anomaly(1e-10, 1000.0)
    assert exploding is not None
    assert (exploding["kind"], exploding["value"], exploding["threshold"]) == (
        "exploding", 2000.0, 100.0,
    )  # fmt: skip
    nan = _anomaly(math.nan, 1000.0, 1e-10)
    assert nan is not None
    assert nan["kind"] == "nan"
    assert nan["threshold"] is None  # no limit was crossed: the gradient is not a number
    assert math.isnan(float(nan["value"]))  # type: ignore[arg-type]
    assert _anomaly(math.inf)["kind"] == "nan"  # type: ignore[index]
