"""Gradient health of a seed (or any parameter set), with one host synchronisation.

``stats()`` computes, on the parameters' device and without synchronising, a small tensor
``[total_norm, vanishing_tensors, exploding_tensors, nonfinite_tensors, tensors]``
using ``torch._foreach_norm`` (one fused kernel instead of one per parameter). Training
accumulates these per step with ``merge`` and reads them back once per epoch; ``collect()`` is
the one-shot form that synchronises once. Call after ``backward()`` and before the optimizer
step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

STATS_LEN = 5
_TOTAL, _VANISH, _EXPLODE, _NONFINITE, _COUNT = range(STATS_LEN)


class SeedGradientCollector:
    """Measures gradient norms; thresholds apply to each parameter tensor's L2 norm and to
    the total (the raw total is always reported, not a clamped feature)."""

    def __init__(self, vanishing_threshold: float = 1e-7, exploding_threshold: float = 100.0):
        self.vanishing_threshold = vanishing_threshold
        self.exploding_threshold = exploding_threshold

    def stats(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
        """Device tensor of gradient stats (no host sync); None when nothing has a gradient."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return None
        norms = torch.stack(torch._foreach_norm(grads)).float()
        finite = torch.isfinite(norms)
        return torch.stack(
            [
                torch.linalg.vector_norm(norms),
                ((norms < self.vanishing_threshold) & finite).sum().float(),
                ((norms > self.exploding_threshold) & finite).sum().float(),
                (~finite).sum().float(),
                torch.tensor(float(len(grads)), device=norms.device),
            ]
        )

    @staticmethod
    def merge(acc: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
        """Combine two steps' stats (elementwise max: the worst step of the epoch wins).
        A non-finite total stays non-finite (max ignores NaN, so it is kept explicitly)."""
        if acc is None:
            return new
        if new is None:
            return acc
        merged = torch.maximum(acc, new)
        return torch.where(torch.isnan(acc) | torch.isnan(new), torch.nan, merged)

    def summarize(self, values: Sequence[float]) -> dict[str, Any]:
        """Host-side dict from synchronised ``stats`` values."""
        total = float(values[_TOTAL])
        count = max(float(values[_COUNT]), 1.0)
        nonfinite = values[_NONFINITE] > 0 or not math.isfinite(total)
        bad = values[_VANISH] + values[_EXPLODE] + values[_NONFINITE]
        return {
            "gradient_norm": total,
            "gradient_health": 0.0 if nonfinite else max(0.0, 1.0 - bad / count),
            "has_vanishing": (not nonfinite) and total < self.vanishing_threshold,
            "has_exploding": nonfinite or total > self.exploding_threshold,
            "has_nonfinite": bool(nonfinite),
        }

    def collect(self, parameters: Iterable[torch.nn.Parameter]) -> dict[str, Any]:
        """gradient_norm, gradient_health, has_vanishing, has_exploding (and has_nonfinite),
        with exactly one host synchronisation."""
        stats = self.stats(parameters)
        if stats is None:
            return {
                "gradient_norm": 0.0,
                "gradient_health": 1.0,
                "has_vanishing": False,
                "has_exploding": False,
                "has_nonfinite": False,
            }
        return self.summarize(stats.tolist())


def collect_seed_gradients(
    parameters: Iterable[torch.nn.Parameter],
    vanishing_threshold: float = 1e-7,
    exploding_threshold: float = 100.0,
) -> dict[str, Any]:
    """One-shot :meth:`SeedGradientCollector.collect`."""
    return SeedGradientCollector(vanishing_threshold, exploding_threshold).collect(parameters)
