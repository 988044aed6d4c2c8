"""SeedGradientCollector: vanishing and exploding detection, one host sync per call."""

from __future__ import annotations

import math

import pytest
import torch

from esper.simic.gradient_collector import SeedGradientCollector, collect_seed_gradients


def _params(*grads: float) -> list[torch.nn.Parameter]:
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.full((4,), g)
        out.append(p)
    return out


def test_healthy_gradients() -> None:
    r = collect_seed_gradients(_params(0.1, 0.2))
    assert r["gradient_norm"] == pytest.approx(math.sqrt(4 * 0.01 + 4 * 0.04))
    assert r["gradient_health"] == 1.0
    assert not r["has_vanishing"]
    assert not r["has_exploding"]


def test_vanishing_gradients_are_detected() -> None:
    r = collect_seed_gradients(_params(1e-10, 1e-10))
    assert r["has_vanishing"]
    assert r["gradient_health"] == 0.0
    assert not r["has_exploding"]


def test_exploding_gradients_are_detected_and_the_raw_norm_is_kept() -> None:
    r = collect_seed_gradients(_params(1000.0, 0.1))
    assert r["has_exploding"]
    assert r["gradient_norm"] > 1000.0  # raw, not clamped
    assert r["gradient_health"] == pytest.approx(0.5)


def test_non_finite_gradients_count_as_exploding_with_zero_health() -> None:
    r = collect_seed_gradients(_params(math.nan, 0.1))
    assert r["has_exploding"]
    assert r["has_nonfinite"]
    assert r["gradient_health"] == 0.0


def test_thresholds_are_configurable_and_no_grads_is_healthy() -> None:
    assert SeedGradientCollector(exploding_threshold=0.5).collect(_params(1.0))["has_exploding"]
    assert (
        SeedGradientCollector().collect([torch.nn.Parameter(torch.zeros(2))])["gradient_health"]
        == 1.0
    )


def test_matches_a_per_parameter_loop_to_1e_6() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(60)])
    model(torch.randn(8, 16)).sum().backward()
    r = collect_seed_gradients(model.parameters())
    loop = math.sqrt(sum(p.grad.norm().item() ** 2 for p in model.parameters()))  # type: ignore[union-attr]
    assert r["gradient_norm"] == pytest.approx(loop, rel=1e-6)


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
