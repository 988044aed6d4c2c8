"""PPO for the factored policy: rollout storage, GAE, the clipped update and its vital signs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from esper.leyline import ACTION_HEADS
from esper.simic.collectives import Collectives, LocalCollectives
from esper.tamiyo.policy import ActionBatch, PolicyNetwork
from esper.tolaria.gradients import SeedGradientCollector


@dataclass(slots=True)
class PPOConfig:
    lr: float = 3e-4
    clip_ratio: float = 0.2
    entropy_coef: float = 0.05
    entropy_coef_final: float = 0.005
    entropy_anneal_episodes: int = 0
    value_coef: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 32
    target_kl: float = 0.03
    """Stop the update's epochs early once the approximate KL exceeds this."""
    max_grad_norm: float = 0.5
    entropy_collapse_ratio: float = 0.1
    """Entropy below this fraction of its maximum counts as collapsed."""


@dataclass(slots=True)
class Rollout:
    """One batch of episodes, stored per env as lists of steps."""

    obs: list[list[torch.Tensor]] = field(default_factory=list)
    actions: list[list[torch.Tensor]] = field(default_factory=list)
    log_probs: list[list[torch.Tensor]] = field(default_factory=list)
    values: list[list[torch.Tensor]] = field(default_factory=list)
    masks: list[list[dict[str, torch.Tensor]]] = field(default_factory=list)
    rewards: list[list[float]] = field(default_factory=list)

    @classmethod
    def for_envs(cls, n_envs: int) -> Rollout:
        r = cls()
        for lst in (r.obs, r.actions, r.log_probs, r.values, r.masks, r.rewards):
            lst.extend([] for _ in range(n_envs))
        return r

    def add(self, env: int, obs: torch.Tensor, batch: ActionBatch, row: int) -> None:
        self.obs[env].append(obs[row])
        self.actions[env].append(batch.actions[row])
        self.log_probs[env].append(batch.log_prob[row])
        self.values[env].append(batch.value[row])
        self.masks[env].append({h: m[row] for h, m in batch.masks.items()})

    @property
    def steps(self) -> int:
        return sum(len(r) for r in self.rewards)


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Generalised advantage estimates for one finished episode (no bootstrap at the end)."""
    adv = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


class PPOTrainer:
    """Updates a PolicyNetwork from rollouts and reports every vital sign.

    With several ranks (``comm``), each rank updates from its own envs' rollout: every
    minibatch's gradients are averaged over the ranks before clipping, and the early stop on
    KL is decided on the ranks' mean, so every rank takes the same optimizer steps and the
    policy stays identical everywhere. Advantages are normalised per rank."""

    def __init__(
        self, policy: PolicyNetwork, config: PPOConfig, comm: Collectives | None = None
    ) -> None:
        self.policy = policy
        self.config = config
        self.comm: Collectives = comm if comm is not None else LocalCollectives()
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
        self.collector = SeedGradientCollector(vanishing_threshold=1e-8, exploding_threshold=10.0)
        self.entropy_coef = config.entropy_coef
        self.updates = 0
        self.last_gradients: dict[str, Any] = self.collector.collect([])
        """The policy's gradient summary in the last update (its worst minibatch)."""

    def entropy_schedule(self) -> dict[str, float | int]:
        """The entropy coefficient's schedule (start, end, episodes); empty when constant."""
        cfg = self.config
        if cfg.entropy_anneal_episodes <= 0:
            return {}
        return {
            "start": cfg.entropy_coef,
            "end": cfg.entropy_coef_final,
            "episodes": cfg.entropy_anneal_episodes,
        }

    def anneal(self, episodes_completed: int) -> None:
        """Entropy coefficient falls linearly to its final value over the anneal period."""
        cfg = self.config
        if cfg.entropy_anneal_episodes <= 0:
            return
        frac = min(1.0, episodes_completed / cfg.entropy_anneal_episodes)
        self.entropy_coef = cfg.entropy_coef + frac * (cfg.entropy_coef_final - cfg.entropy_coef)

    def _head_params(self, head: str) -> list[torch.nn.Parameter]:
        return list(self.policy.heads[head].parameters())

    def _flatten(self, rollout: Rollout) -> _Batch:
        """All envs' steps as tensors, with GAE advantages (normalised) and returns."""
        cfg = self.config
        obs, actions, old_logp, returns, advantages = [], [], [], [], []
        masks: dict[str, list[torch.Tensor]] = {h: [] for h in ACTION_HEADS}
        for e in range(len(rollout.rewards)):
            vals = [float(v) for v in torch.stack(rollout.values[e]).tolist()]
            adv = gae(rollout.rewards[e], vals, cfg.gamma, cfg.gae_lambda)
            returns += [a + v for a, v in zip(adv, vals, strict=True)]
            advantages += adv
            obs += rollout.obs[e]
            actions += rollout.actions[e]
            old_logp += rollout.log_probs[e]
            for m in rollout.masks[e]:
                for h in ACTION_HEADS:
                    masks[h].append(m[h])
        adv_t = torch.tensor(advantages)
        if len(adv_t) > 1:
            adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)
        return _Batch(
            torch.stack(obs), torch.stack(actions), torch.stack(old_logp),
            torch.tensor(returns), adv_t, {h: torch.stack(v) for h, v in masks.items()},
        )  # fmt: skip

    def _gradient_health(self, acc: _UpdateStats) -> None:
        """Per-layer and per-head gradient health of the current gradients (before clipping),
        folded into the update's worst minibatch: the most layers flagged, each layer's lowest
        health, each head's largest norm (a NaN norm is the largest)."""
        acc.policy_stats = self.collector.merge(
            acc.policy_stats, self.collector.stats(self.policy.parameters())
        )
        nan = dead = exploding = 0
        for name, module in self.policy.named_children():
            stats = self.collector.stats(module.parameters())
            if stats is None:
                continue
            summary = self.collector.summarize(stats.tolist())
            health = summary["gradient_health"]
            acc.layer_health[name] = min(acc.layer_health.get(name, 1.0), health)
            nan += int(summary["has_nonfinite"])
            dead += int(summary["has_vanishing"])
            exploding += int(summary["has_exploding"])
        acc.nan_grads = max(acc.nan_grads, nan)
        acc.dead = max(acc.dead, dead)
        acc.exploding = max(acc.exploding, exploding)
        for h in ACTION_HEADS:
            stats = self.collector.stats(self._head_params(h))
            if stats is not None:
                norm = self.collector.summarize(stats.tolist())["total_norm"]
                if math.isnan(norm) or norm > acc.head_grad[h]:
                    acc.head_grad[h] = norm

    def _minibatch(self, b: _Batch, idx: torch.Tensor, acc: _UpdateStats) -> float:
        """One optimizer step on a minibatch; returns its approximate KL."""
        cfg = self.config
        logp, entropy, value, per_head = self.policy.evaluate(
            b.obs[idx], b.actions[idx], {h: m[idx] for h, m in b.masks.items()}
        )
        ratio = torch.exp(logp - b.old_logp[idx])
        a = b.advantages[idx]
        clipped_ratio = torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
        policy_loss = -torch.min(ratio * a, clipped_ratio * a).mean()
        value_loss = F.mse_loss(value, b.returns[idx])
        loss = policy_loss + cfg.value_coef * value_loss - self.entropy_coef * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.comm.average_gradients(self.policy.parameters())
        self._gradient_health(acc)  # of the gradients applied: the same on every rank
        total = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - torch.log(ratio)).mean()
            clip_frac = ((ratio - 1).abs() > cfg.clip_ratio).float().mean()
            packed = torch.stack(
                [policy_loss, value_loss, entropy.mean(), approx_kl, clip_frac, total]
                + [per_head[h].mean() for h in ACTION_HEADS]
            ).tolist()  # one read-back per minibatch
        for key, v in zip(("pl", "vl", "ent", "kl", "cf", "grad"), packed[:6], strict=True):
            acc.series[key].append(v)
        for h, v in zip(ACTION_HEADS, packed[6:], strict=True):
            acc.head_entropy[h].append(v)
        acc.ratios.append(ratio.detach())
        acc.steps += 1
        return float(packed[3])

    def update(self, rollout: Rollout) -> dict[str, Any]:
        """One PPO update over the rollout; returns the fields of PPO_UPDATE_COMPLETED that
        come from the update (the caller adds lr, batch and the accuracy context)."""
        t0 = time.perf_counter()
        cfg, policy = self.config, self.policy
        b = self._flatten(rollout)
        acc = _UpdateStats()
        n = b.obs.shape[0]
        early_stop: int | None = None
        for epoch in range(cfg.update_epochs):
            perm = torch.randperm(n)
            kls = [
                self._minibatch(b, perm[start : start + cfg.minibatch_size], acc)
                for start in range(0, n, cfg.minibatch_size)
            ]
            if self.comm.mean(sum(kls) / len(kls)) > cfg.target_kl:
                early_stop = epoch
                break
        with torch.no_grad():
            _, _, new_values, _ = policy.evaluate(b.obs, b.actions, b.masks)
            var = b.returns.var()
            explained = float(1 - (b.returns - new_values).var() / var) if var > 1e-8 else 0.0
        self.updates += 1
        if acc.policy_stats is not None:
            self.last_gradients = self.collector.summarize(acc.policy_stats.tolist())
        r = torch.cat(acc.ratios).tolist()
        mean_r = sum(r) / len(r)
        entropy = _mean(acc.series["ent"])
        max_entropy = sum(math.log(k) for k in policy.sizes.values())
        return {
            "policy_loss": _mean(acc.series["pl"]),
            "value_loss": _mean(acc.series["vl"]),
            "entropy": entropy,
            "kl_divergence": _mean(acc.series["kl"]),
            "clip_fraction": _mean(acc.series["cf"]),
            "explained_variance": explained,
            "entropy_coef": self.entropy_coef,
            "ratio_mean": mean_r,
            "ratio_min": min(r),
            "ratio_max": max(r),
            "ratio_std": math.sqrt(sum((x - mean_r) ** 2 for x in r) / len(r)),
            "grad_norm": max(acc.series["grad"]),
            "update_time_ms": (time.perf_counter() - t0) * 1000.0,
            "nan_grad_count": acc.nan_grads,
            "dead_layers": acc.dead,
            "exploding_layers": acc.exploding,
            "layer_gradient_health": _mean(list(acc.layer_health.values()), default=1.0),
            "layer_gradient_health_by_layer": dict(acc.layer_health),
            "entropy_collapsed": entropy < cfg.entropy_collapse_ratio * max_entropy,
            "train_steps": acc.steps,
            "early_stop_epoch": early_stop,
            **{f"head_{h}_entropy": _mean(v) for h, v in acc.head_entropy.items()},
            **{f"head_{h}_grad_norm": acc.head_grad[h] for h in ACTION_HEADS},
        }


def _mean(values: list[float], default: float = 0.0) -> float:
    return sum(values) / len(values) if values else default


@dataclass(slots=True)
class _Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    old_logp: torch.Tensor
    returns: torch.Tensor
    advantages: torch.Tensor
    masks: dict[str, torch.Tensor]


@dataclass(slots=True)
class _UpdateStats:
    series: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("pl", "vl", "ent", "kl", "cf", "grad")}
    )
    head_entropy: dict[str, list[float]] = field(
        default_factory=lambda: {h: [] for h in ACTION_HEADS}
    )
    head_grad: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ACTION_HEADS, 0.0))
    layer_health: dict[str, float] = field(default_factory=dict)
    ratios: list[torch.Tensor] = field(default_factory=list)
    policy_stats: torch.Tensor | None = None
    """The whole policy's gradient stats, worst minibatch of the update."""
    nan_grads: int = 0
    dead: int = 0
    exploding: int = 0
    steps: int = 0
