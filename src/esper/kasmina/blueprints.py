"""Blueprints: recipes for seed modules. Every seed maps (N, C, H, W) to the same shape."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class _ConvLight(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _ConvHeavy(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels * 2
        self.body = nn.Sequential(
            # No bias before a batch norm: the norm removes it, so its gradient is always zero.
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Attention(nn.Module):
    """Squeeze-and-excitation: reweights channels by a gate computed from their means."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(4, channels // 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(x)[:, :, None, None]
        return x * weights - x


class _Norm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=min(4, channels), num_channels=channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class _Depthwise(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.act(self.depthwise(x)))


BLUEPRINTS: dict[str, Callable[[int], nn.Module]] = {
    "conv_light": _ConvLight,
    "conv_heavy": _ConvHeavy,
    "attention": _Attention,
    "norm": _Norm,
    "depthwise": _Depthwise,
}
"""Blueprint id -> builder taking the slot's channel count. Order is the policy's action order."""

BLUEPRINT_IDS: tuple[str, ...] = tuple(BLUEPRINTS)


def build_seed(blueprint_id: str, channels: int) -> nn.Module:
    """A fresh seed module from a blueprint; raises KeyError naming known blueprints."""
    try:
        builder = BLUEPRINTS[blueprint_id]
    except KeyError:
        raise KeyError(
            f"unknown blueprint {blueprint_id!r} (known: {', '.join(BLUEPRINT_IDS)})"
        ) from None
    return builder(channels)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
