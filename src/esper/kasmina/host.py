"""HostCNN: the host network, three convolutional blocks with a slot after each."""

from __future__ import annotations

import torch
from torch import nn

from esper.kasmina.slot import LifecycleConfig, SeedSlot, SlotContext

SLOT_IDS: tuple[str, ...] = ("early", "mid", "late")


class HostCNN(nn.Module):
    """conv-BN-ReLU blocks of ``widths`` channels, each followed by a slot and 2x pooling
    (none after the last), then global average pooling and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widths: tuple[int, int, int] = (8, 16, 32),
        lifecycle: LifecycleConfig | None = None,
        context: SlotContext | None = None,
    ) -> None:
        super().__init__()
        self.context = context or SlotContext()
        blocks = []
        prev = in_channels
        for width in widths:
            blocks.append(
                nn.Sequential(
                    # No bias before a batch norm: the norm removes it (its gradient is 0).
                    nn.Conv2d(prev, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.slots = nn.ModuleDict(
            {
                sid: SeedSlot(sid, w, lifecycle, self.context)
                for sid, w in zip(SLOT_IDS, widths, strict=True)
            }
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.blocks) - 1
        for i, (block, slot) in enumerate(zip(self.blocks, self.slots.values(), strict=True)):
            x = slot(block(x))
            if i < last and x.shape[-1] > 1:
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))

    def slot(self, slot_id: str) -> SeedSlot:
        slot = self.slots[slot_id]
        assert isinstance(slot, SeedSlot)
        return slot

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        """slot_id -> slot, in host order."""
        return {sid: self.slot(sid) for sid in self.slots}

    def cull_live_seeds(self, reason: str) -> int:
        """Cull every live seed (automatically, for ``reason``); the number culled."""
        return sum(slot.cull(reason, auto_culled=True) for slot in self.seed_slots.values())

    def live_seed_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the live (not yet fossilized) seeds."""
        return tuple(
            f"slots.{sid}.seed." for sid, slot in self.seed_slots.items() if slot.has_live_seed
        )

    def host_parameters(self) -> list[nn.Parameter]:
        """Parameters of the host itself, without any seed (fossilized seeds train with their
        own optimizer)."""
        seed_ids = {id(p) for slot in self.seed_slots.values() for p in slot.trainable_parameters()}
        return [p for p in self.parameters() if id(p) not in seed_ids]

    def host_param_count(self) -> int:
        return sum(p.numel() for p in self.host_parameters())
