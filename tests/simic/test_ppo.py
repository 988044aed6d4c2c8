"""The PPO update's gradient health describes its worst minibatch, not its last one."""

from __future__ import annotations

import math

import torch

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.simic.features import state_dim
from esper.simic.ppo import PPOConfig, PPOTrainer, _UpdateStats
from esper.tamiyo.policy import PolicyNetwork


def _set_grads(policy: PolicyNetwork, value: float, layer: str | None = None) -> None:
    for name, module in policy.named_children():
        for p in module.parameters():
            p.grad = torch.full_like(p, value if layer in (None, name) else 0.01)


def test_a_nan_in_an_early_minibatch_is_still_counted_after_a_healthy_last_one() -> None:
    torch.manual_seed(0)
    policy = PolicyNetwork(state_dim(len(SLOT_IDS)), len(SLOT_IDS), len(BLUEPRINT_IDS))
    trainer = PPOTrainer(policy, PPOConfig())
    acc = _UpdateStats()
    first_layer = next(name for name, _ in policy.named_children())
    _set_grads(policy, math.nan, first_layer)  # minibatch 1: one layer's gradients are NaN
    trainer._gradient_health(acc)
    _set_grads(policy, 0.01)  # minibatch 2: all healthy
    trainer._gradient_health(acc)
    assert acc.nan_grads == 1
    assert acc.layer_health[first_layer] < 1.0  # its worst minibatch, not its last
    assert acc.policy_stats is not None
    assert trainer.collector.summarize(acc.policy_stats.tolist())["has_nonfinite"]
