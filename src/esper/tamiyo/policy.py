"""PolicyNetwork: a multi-head actor-critic over the factored action space.

Heads: op (WAIT, GERMINATE, CULL, FOSSILIZE), slot, blueprint, blend; plus a value head. Only
physically impossible actions are masked: GERMINATE needs a dormant slot, CULL a live seed,
FOSSILIZE a probationary seed, and the slot head offers only the slots the chosen op can act
on. Heads an op does not use (slot for WAIT; blueprint and blend unless GERMINATE) do not
enter the action's log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Categorical

from esper.leyline import ACTION_HEADS, BlendMode, Op

_NEG = -1e9


@dataclass(slots=True)
class ActionBatch:
    """Sampled actions with everything PPO needs to re-evaluate them."""

    actions: torch.Tensor  # (B, 4) long: op, slot, blueprint, blend
    log_prob: torch.Tensor  # (B,)
    value: torch.Tensor  # (B,)
    masks: dict[str, torch.Tensor]  # head -> (B, n) bool, as used for sampling


class PolicyNetwork(nn.Module):
    def __init__(self, state_dim: int, n_slots: int, n_blueprints: int, hidden: int = 128) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.sizes = {
            "op": len(Op),
            "slot": n_slots,
            "blueprint": n_blueprints,
            "blend": len(BlendMode),
        }
        self.trunk = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.heads = nn.ModuleDict({h: nn.Linear(hidden, n) for h, n in self.sizes.items()})
        self.value_head = nn.Linear(hidden, 1)
        for head in self.heads.values():
            assert isinstance(head, nn.Linear)
            nn.init.orthogonal_(head.weight, gain=0.01)
            nn.init.zeros_(head.bias)

    def _logits(self, obs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = self.trunk(obs)
        return {h: self.heads[h](z) for h in ACTION_HEADS}, self.value_head(z).squeeze(-1)

    @staticmethod
    def _relevance(op: torch.Tensor) -> dict[str, torch.Tensor]:
        germinate = op == int(Op.GERMINATE)
        return {
            "op": torch.ones_like(germinate),
            "slot": op != int(Op.WAIT),
            "blueprint": germinate,
            "blend": germinate,
        }

    def _dist(self, logits: torch.Tensor, mask: torch.Tensor) -> Categorical:
        return Categorical(logits=logits.masked_fill(~mask, _NEG))

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, op_mask: torch.Tensor, slot_masks: torch.Tensor
    ) -> ActionBatch:
        """Sample actions. ``slot_masks`` is (B, n_ops, n_slots): the slots each op may use."""
        logits, value = self._logits(obs)
        op = self._dist(logits["op"], op_mask).sample()
        slot_mask = slot_masks[torch.arange(op.shape[0]), op]
        masks = {
            "op": op_mask,
            "slot": slot_mask,
            "blueprint": torch.ones_like(logits["blueprint"], dtype=torch.bool),
            "blend": torch.ones_like(logits["blend"], dtype=torch.bool),
        }
        chosen = [op] + [self._dist(logits[h], masks[h]).sample() for h in ACTION_HEADS[1:]]
        actions = torch.stack(chosen, dim=1)
        log_prob, _, _ = self._evaluate(logits, actions, masks)
        return ActionBatch(actions, log_prob, value, masks)

    def _evaluate(
        self,
        logits: dict[str, torch.Tensor],
        actions: torch.Tensor,
        masks: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        relevant = self._relevance(actions[:, 0])
        log_prob = torch.zeros(actions.shape[0], device=actions.device)
        entropy = torch.zeros_like(log_prob)
        head_entropy = {}
        for i, h in enumerate(ACTION_HEADS):
            dist = self._dist(logits[h], masks[h])
            log_prob = log_prob + dist.log_prob(actions[:, i]) * relevant[h]
            ent = dist.entropy()
            head_entropy[h] = ent
            entropy = entropy + ent
        return log_prob, entropy, head_entropy

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor, masks: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(log_prob, entropy, value, per-head entropy) of stored actions under the current
        parameters, with the masks used when they were sampled."""
        logits, value = self._logits(obs)
        log_prob, entropy, head_entropy = self._evaluate(logits, actions, masks)
        return log_prob, entropy, value, head_entropy
