"""The seed gradient collector of plan 003, where the plan names it.

It lives in ``esper.tolaria.gradients`` (the training loop calls it); this module is its public
path in the RL package, as the user's plans and SPEC.md name it.
"""

from __future__ import annotations

from esper.tolaria.gradients import (
    STATS_LEN,
    SeedGradientCollector,
    collect_seed_gradients,
    gradient_anomaly,
)

__all__ = ["STATS_LEN", "SeedGradientCollector", "collect_seed_gradients", "gradient_anomaly"]
