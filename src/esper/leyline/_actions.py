"""The controller's factored action space: an op, a slot, a blueprint and a blend."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Op(IntEnum):
    """What the controller does this epoch."""

    WAIT = 0
    GERMINATE = 1
    CULL = 2
    FOSSILIZE = 3


class BlendMode(IntEnum):
    """How a seed's alpha rises while it blends into the host."""

    LINEAR = 0
    SIGMOID = 1
    GATED = 2


@dataclass(frozen=True, slots=True)
class FactoredAction:
    """One decision of the controller, one value per action head."""

    op: Op
    slot_id: str
    blueprint_id: str
    blend_id: str
    """The blend mode's name (``BlendMode.name``)."""


ACTION_HEADS: tuple[str, ...] = ("op", "slot", "blueprint", "blend")
"""The action heads of the policy, in the order the policy samples them."""
