"""Which actions are physically possible in an env (the policy's action masks).

What the policy *sees* is in ``esper.simic.features``, with every other feature set.
"""

from __future__ import annotations

import torch

from esper.kasmina import SeedSlot
from esper.leyline import Op, SeedStage
from esper.tolaria.environment import MorphogeneticEnv


def _can(slot: SeedSlot, op: Op) -> bool:
    if op is Op.GERMINATE:
        return slot.is_dormant
    if op is Op.CULL:
        return slot.has_live_seed
    if op is Op.FOSSILIZE:
        return slot.stage is SeedStage.PROBATIONARY
    return True


def action_masks(env: MorphogeneticEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """(op mask (4,), slot masks (4, n_slots)): True where the action is possible."""
    slots = env.slots
    slot_masks = torch.tensor([[_can(s, op) for s in slots] for op in Op], dtype=torch.bool)
    op_mask = slot_masks.any(dim=1)
    # Rows of impossible ops are never sampled; keep them non-empty for a valid distribution.
    slot_masks[~op_mask] = True
    return op_mask, slot_masks
