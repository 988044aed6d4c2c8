"""Decision: what a controller chose for one env this epoch."""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline import BlendMode, Op


@dataclass(frozen=True, slots=True)
class Decision:
    op: Op
    slot_id: str
    blueprint_id: str = "conv_light"
    blend: BlendMode = BlendMode.LINEAR
    reason: str = ""
