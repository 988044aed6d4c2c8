"""Implicit Q-learning (IQL) for the offline controller.

Trained on recorded episodes: the value network fits an expectile of Q (no max over unseen
actions), Q fits one-step returns bootstrapped with V, and the policy is extracted by
advantage-weighted regression on the dataset's own actions. Checkpoints hold tensors and plain
values only and load with ``torch.load(weights_only=True)``
(``esper.simic.comparison.load_iql_model``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esper.simic.episodes import N_ACTIONS


def _mlp(state_dim: int, out: int, hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, out),
    )  # fmt: skip


@dataclass(slots=True)
class IQLConfig:
    gamma: float = 0.99
    expectile: float = 0.7
    beta: float = 3.0
    """Inverse temperature of advantage weighting."""
    lr: float = 3e-4
    batch_size: int = 256
    target_tau: float = 0.005
    max_weight: float = 100.0


class IQL(nn.Module):
    """q_network: Q(s, .) over the N_ACTIONS (op, slot) pairs; v_network: V(s); policy."""

    def __init__(self, state_dim: int, n_actions: int = N_ACTIONS, config: IQLConfig | None = None):
        super().__init__()
        self.state_dim = state_dim
        self.n_actions = n_actions
        self.config = config or IQLConfig()
        self.q_network = _mlp(state_dim, n_actions)
        self.target_q = _mlp(state_dim, n_actions)
        self.target_q.load_state_dict(self.q_network.state_dict())
        self.v_network = _mlp(state_dim, 1)
        self.policy = _mlp(state_dim, n_actions)

    def train_offline(
        self, data: dict[str, torch.Tensor], steps: int, seed: int = 0
    ) -> dict[str, float]:
        """Fit on a dataset of obs, actions, rewards, next_obs, dones; returns final losses."""
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        opt_q = torch.optim.Adam(self.q_network.parameters(), lr=cfg.lr)
        opt_v = torch.optim.Adam(self.v_network.parameters(), lr=cfg.lr)
        opt_pi = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        n = data["actions"].shape[0]
        losses = {"q_loss": 0.0, "v_loss": 0.0, "policy_loss": 0.0}
        for _ in range(steps):
            idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
            s, a = data["obs"][idx], data["actions"][idx]
            r, s2, d = data["rewards"][idx], data["next_obs"][idx], data["dones"][idx]
            with torch.no_grad():
                q_target = self.target_q(s).gather(1, a[:, None]).squeeze(1)
            v = self.v_network(s).squeeze(1)
            u = q_target - v
            weight = torch.abs(cfg.expectile - (u < 0).float())
            v_loss = (weight * u.pow(2)).mean()
            opt_v.zero_grad()
            v_loss.backward()
            opt_v.step()
            with torch.no_grad():
                backup = r + cfg.gamma * (1 - d) * self.v_network(s2).squeeze(1)
            q = self.q_network(s).gather(1, a[:, None]).squeeze(1)
            q_loss = F.mse_loss(q, backup)
            opt_q.zero_grad()
            q_loss.backward()
            opt_q.step()
            with torch.no_grad():
                for tp, p in zip(
                    self.target_q.parameters(), self.q_network.parameters(), strict=True
                ):
                    tp.mul_(1 - cfg.target_tau).add_(cfg.target_tau * p)
                adv = q_target - self.v_network(s).squeeze(1)
                w = torch.clamp(torch.exp(cfg.beta * adv), max=cfg.max_weight)
            logp = F.log_softmax(self.policy(s), dim=1).gather(1, a[:, None]).squeeze(1)
            pi_loss = -(w * logp).mean()
            opt_pi.zero_grad()
            pi_loss.backward()
            opt_pi.step()
            losses = {
                "q_loss": float(q_loss.detach()),
                "v_loss": float(v_loss.detach()),
                "policy_loss": float(pi_loss.detach()),
            }
        return losses

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mask: torch.Tensor) -> int:
        """The policy's most likely possible action."""
        logits = self.policy(obs[None]).squeeze(0)
        return int(logits.masked_fill(~mask, float("-inf")).argmax())

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "format": "esper-iql-v1",
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "state_dict": self.state_dict(),
        }
        torch.save(checkpoint, path)
