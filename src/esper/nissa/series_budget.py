"""How many series one rank's ``/metrics`` serves, from the metric catalogue, and the budget.

Every family's series count is the product of its labels' cardinalities: ``env_id`` the envs
this rank steps, ``slot_id`` and ``blueprint_id`` the host's slots and blueprints, the closed
sets (heads, ops, stages, stage transitions, anomaly scopes and kinds, reasons, reward
components, event types) from the payload catalogue. A series is one line per sample: a gauge
one, a counter two (``_total`` and ``_created``), a histogram its buckets, ``+Inf``, ``_count``,
``_sum`` and ``_created``. Label sets the exporter creates only when they occur (culls by
reason, rollbacks by reason) are counted in full, so this is an upper bound, and the figure a
user can plan with: series per rank = fixed + per_env x envs (+ CUDA series per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline import (
    ACTION_HEADS,
    COLLECTIVE_OPS,
    REWARD_COMPONENTS,
    VALID_TRANSITIONS,
    Op,
    SeedStage,
    TelemetryEventType,
    allowed_values,
)
from esper.nissa.metric_catalogue import METRICS, MetricKind, MetricSpec

ET = TelemetryEventType

SERIES_BUDGET_PER_RANK = 10_000
"""Series one rank may serve. A Prometheus scrapes a target of this size in tens of
milliseconds, and 1,000 such ranks (10 million series) are what one horizontally scaled store
takes (docs/SCALING.md); past it, fewer envs per rank keep the job observable."""


@dataclass(frozen=True, slots=True)
class SeriesEstimate:
    """Exposition lines of one rank's ``/metrics`` (an upper bound)."""

    fixed: int
    """Lines that do not depend on the envs."""
    per_env: int
    """Lines each env adds."""
    envs: int
    per_gpu: int
    gpus: int

    @property
    def total(self) -> int:
        return self.fixed + self.per_env * self.envs + self.per_gpu * self.gpus

    @property
    def over_budget(self) -> bool:
        return self.total > SERIES_BUDGET_PER_RANK


def _lines_per_series(spec: MetricSpec) -> int:
    if spec.kind is MetricKind.GAUGE:
        return 1
    if spec.kind is MetricKind.COUNTER:
        return 2
    return len(spec.buckets) + 4


def estimate_series(
    *,
    envs: int,
    slots: int,
    blueprints: int,
    multi_rank: bool = False,
    gpus: int = 0,
    backends: int = 3,
) -> SeriesEstimate:
    """The lines of one rank's ``/metrics`` (see the module docstring)."""
    closed = {
        "head": len(ACTION_HEADS),
        "success": 2,
        "stage": sum(1 for s in SeedStage if s.name != "UNKNOWN"),
        "scope": len(allowed_values(ET.GRADIENT_ANOMALY, "scope")),
        "kind": len(allowed_values(ET.GRADIENT_ANOMALY, "kind")),
        "event_type": len(ET),
        "component": len(REWARD_COMPONENTS),
        "backend": backends + 1,  # and the hub's own drops
        "slot_id": slots,
        "blueprint_id": blueprints,
        "run_id": 1,
        "task": 1,
        "mode": 1,
        "reward_mode": 1,
    }
    fixed = per_env = per_gpu = 0
    for spec in METRICS:
        labels = set(spec.labels)
        n = _lines_per_series(spec)
        if {"device", "gpu", "UUID"} <= labels:
            per_gpu += n
            continue
        if spec.name == "esper_collective_wait_seconds":
            fixed += n * len(COLLECTIVE_OPS) if multi_rank else 0
            continue
        for label in spec.labels:
            if label == "env_id":
                continue
            if label == "op":
                n *= len(Op)
            elif label == "reason":
                n *= _reasons(spec)
            elif label in ("from_stage", "to_stage"):
                continue  # counted once below, as transitions
            else:
                n *= closed[label]
        if "from_stage" in labels:
            n *= sum(len(targets) for targets in VALID_TRANSITIONS.values())
        if "env_id" in labels:
            per_env += n
        else:
            fixed += n
    return SeriesEstimate(fixed, per_env, envs, per_gpu, gpus)


_REASON_SOURCES = {
    "esper_seed_culled_total": ET.SEED_CULLED,
    "esper_governor_rollbacks_total": ET.GOVERNOR_ROLLBACK,
    "esper_counterfactual_unavailable_total": ET.COUNTERFACTUAL_COMPUTED,
}
"""Families labelled ``reason``, and the event whose closed set of reasons they count."""


def _reasons(spec: MetricSpec) -> int:
    return len(allowed_values(_REASON_SOURCES[spec.name], "reason"))
