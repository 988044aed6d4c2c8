"""Kasmina holds the host network, its slots and seeds, blueprints, the lifecycle and blending."""

from esper.kasmina.blueprints import BLUEPRINT_IDS, BLUEPRINTS, build_seed, count_params
from esper.kasmina.host import SLOT_IDS, HostCNN
from esper.kasmina.slot import (
    LifecycleConfig,
    LifecycleError,
    SeedSlot,
    SlotContext,
    alpha_schedule,
)
from esper.kasmina.state import SeedMetrics, SeedState

__all__ = [
    "BLUEPRINTS",
    "BLUEPRINT_IDS",
    "SLOT_IDS",
    "HostCNN",
    "LifecycleConfig",
    "LifecycleError",
    "SeedMetrics",
    "SeedSlot",
    "SeedState",
    "SlotContext",
    "alpha_schedule",
    "build_seed",
    "count_params",
]
