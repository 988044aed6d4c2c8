"""The controller's factored action space: an op, a slot, a blueprint and a blend."""

from __future__ import annotations

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


ACTION_HEADS: tuple[str, ...] = ("op", "slot", "blueprint", "blend")
"""The action heads of the policy, in the order the policy samples them."""
