"""Gradient health of a seed (or any parameter set), plan 003, with one host synchronisation,
and the one rule that turns it into a GRADIENT_ANOMALY.

Public as ``esper.simic.gradient_collector`` too (the path plan 003 names); it lives here, in
the training loop's layer, because the training loop is what calls it.

Each gradient tensor is judged on its own L2 norm: one dead (vanishing) or exploding tensor is
flagged even when the others are healthy. From the per-tensor norms:

- ``gradient_norm`` = sqrt(sum of squared tensor norms) / number of tensors (the plan's
  averaged norm; it feeds ``SeedTelemetry``);
- ``total_norm`` = sqrt(sum of squared tensor norms), the raw L2 norm of all the gradients,
  reported as its own field and metric so a saturated feature is still visible;
- ``gradient_health`` = clamp(1 - 0.5 * vanishing_ratio - 0.8 * exploding_ratio, 0, 1), where
  a non-finite tensor counts as exploding (and sets ``has_nonfinite``).

``stats()`` computes these on the parameters' device without synchronising, with
``torch._foreach_norm`` (one fused kernel instead of one per parameter), as a small tensor.
Training accumulates them per step with ``merge`` and reads them back once per epoch;
``collect()`` is the one-shot form that synchronises once. Call after ``backward()`` and before
the optimizer step (which may change the gradients) and before ``zero_grad`` (which clears
them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

STATS_LEN = 7
_TOTAL, _VANISH, _EXPLODE, _NONFINITE, _COUNT, _MAX, _NEG_MIN = range(STATS_LEN)
_VANISHING_WEIGHT = 0.5
_EXPLODING_WEIGHT = 0.8


class SeedGradientCollector:
    """Gradient statistics; the thresholds apply to each gradient tensor's L2 norm."""

    def __init__(self, vanishing_threshold: float = 1e-7, exploding_threshold: float = 100.0):
        """``vanishing_threshold``: a tensor norm below it is vanishing; ``exploding_threshold``:
        above it, exploding."""
        self.vanishing_threshold = vanishing_threshold
        self.exploding_threshold = exploding_threshold

    def stats(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
        """Device tensor of gradient stats (no host sync); None when nothing has a gradient:
        [total norm, vanishing, exploding, non-finite, tensors, largest finite tensor norm,
        minus the smallest finite tensor norm]."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return None
        norms = torch.stack(torch._foreach_norm(grads)).float()
        finite = torch.isfinite(norms)
        # torch.where, not boolean indexing: indexing would synchronise with the device.
        largest = torch.where(finite, norms, 0.0).amax()
        smallest = torch.where(finite, norms, torch.inf).amin()
        return torch.stack(
            [
                torch.linalg.vector_norm(norms),
                ((norms < self.vanishing_threshold) & finite).sum().float(),
                ((norms > self.exploding_threshold) & finite).sum().float(),
                (~finite).sum().float(),
                torch.tensor(float(len(grads)), device=norms.device),
                largest,
                -smallest,
            ]
        )

    @staticmethod
    def merge(acc: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
        """Combine two steps' stats (elementwise max: the worst step of the epoch wins; the
        smallest norm is kept negated, so max keeps the smallest). A non-finite total stays
        non-finite (max ignores NaN, so it is kept explicitly)."""
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
        vanishing = float(values[_VANISH])
        exploding = float(values[_EXPLODE]) + float(values[_NONFINITE])
        health = 1.0 - _VANISHING_WEIGHT * vanishing / count - _EXPLODING_WEIGHT * exploding / count
        nonfinite = values[_NONFINITE] > 0 or not math.isfinite(total)
        return {
            "gradient_norm": total / count,
            "total_norm": total,
            "gradient_health": max(0.0, min(1.0, health)),
            "has_vanishing": vanishing > 0,
            "has_exploding": exploding > 0 or nonfinite,
            "has_nonfinite": bool(nonfinite),
            "max_tensor_norm": float(values[_MAX]),
            "min_tensor_norm": smallest
            if math.isfinite(smallest := -float(values[_NEG_MIN]))
            else 0.0,
        }

    def collect(self, parameters: Iterable[torch.nn.Parameter]) -> dict[str, Any]:
        """gradient_norm, gradient_health, has_vanishing, has_exploding (and total_norm,
        has_nonfinite, max_tensor_norm, min_tensor_norm), with exactly one host
        synchronisation."""
        stats = self.stats(parameters)
        if stats is None:
            return {
                "gradient_norm": 0.0,
                "total_norm": 0.0,
                "gradient_health": 1.0,
                "has_vanishing": False,
                "has_exploding": False,
                "has_nonfinite": False,
                "max_tensor_norm": 0.0,
                "min_tensor_norm": 0.0,
            }
        return self.summarize(stats.tolist())


def collect_seed_gradients(
    seed_parameters: Iterable[torch.nn.Parameter],
    vanishing_threshold: float = 1e-7,
    exploding_threshold: float = 100.0,
) -> dict[str, Any]:
    """One-shot :meth:`SeedGradientCollector.collect`."""
    return SeedGradientCollector(vanishing_threshold, exploding_threshold).collect(seed_parameters)


def gradient_anomaly(
    scope: str,
    gradients: Mapping[str, Any],
    *,
    vanishing_threshold: float,
    exploding_threshold: float,
    env_id: int | None = None,
    slot_id: str | None = None,
) -> dict[str, Any] | None:
    """The GRADIENT_ANOMALY payload for one collector summary, or None when it is healthy.

    The worst finding wins, and ``value`` is the norm the rule judged:

    - ``nan``: a gradient is not finite. No threshold applies (``threshold`` is null); the
      value is the total norm (NaN or infinite).
    - ``exploding``: a gradient tensor's norm is above ``exploding_threshold``; the value is
      the largest tensor norm.
    - ``vanishing``: a gradient tensor's norm is below ``vanishing_threshold``; the value is
      the smallest tensor norm.
    """
    if gradients["has_nonfinite"]:
        kind, value, threshold = "nan", gradients["total_norm"], None
    elif gradients["has_exploding"]:
        kind, value, threshold = "exploding", gradients["max_tensor_norm"], exploding_threshold
    elif gradients["has_vanishing"]:
        kind, value, threshold = "vanishing", gradients["min_tensor_norm"], vanishing_threshold
    else:
        return None
    return {
        "scope": scope,
        "kind": kind,
        "env_id": env_id,
        "slot_id": slot_id,
        "value": float(value),
        "threshold": threshold,
    }
