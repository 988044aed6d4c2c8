"""How many series one rank's ``/metrics`` serves, from the metric catalogue, and the budget.

Every family's series count is the product of its labels' cardinalities: ``env_id`` the envs
this rank steps, ``slot_id`` and ``blueprint_id`` the host's slots and blueprints, the closed
sets (heads, ops, stages, stage transitions, anomaly scopes and kinds, reasons, reward
components, event types) from the payload catalogue. A series is one line per sample: a gauge
one, a counter two (``_total`` and ``_created``), a histogram its buckets, ``+Inf``, ``_count``,
``_sum`` and ``_created``. Label sets the exporter creates only when they occur (culls by
reason, rollbacks by reason) are counted in full, so this is an upper bound, and the figure a
user can plan with: series per rank = fixed + per_env x envs (+ CUDA series per GPU).

At ``--metrics-detail rank`` the families labelled ``env_id`` are folded over the envs
(``esper.nissa.prometheus.catalogue.Fold``): a summed family is one env's worth of lines, a
family folded to mean, min and max three; ``per_env`` is then 0.
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
from esper.nissa.prometheus.catalogue import (
    METRICS,
    Fold,
    MetricDetail,
    MetricKind,
    MetricSpec,
    fold_of,
)

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
    detail: MetricDetail = MetricDetail.ENV
    rank_detail_total: int = 0
    """The total at ``MetricDetail.RANK``, where the envs are folded (what a warning at env
    detail offers)."""

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
    detail: MetricDetail = MetricDetail.ENV,
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
    fixed = per_env = per_gpu = folded = 0
    for spec in METRICS:
        n = _lines_per_series(spec) * _label_sets(spec, closed)
        fold = fold_of(spec)
        if {"device", "gpu", "UUID"} <= set(spec.labels):
            per_gpu += n
        elif spec.name == "esper_collective_wait_seconds":
            fixed += n if multi_rank else 0
        elif fold is None:
            fixed += n
        else:  # n is one env's; folded over the envs: one set of series, or three (stats)
            folded += 3 * n if fold is Fold.STATS else n
            per_env += n if detail is MetricDetail.ENV else 0
    rank_total = fixed + folded + per_gpu * gpus
    if detail is MetricDetail.RANK:
        fixed += folded
    return SeriesEstimate(fixed, per_env, envs, per_gpu, gpus, detail, rank_total)


def _label_sets(spec: MetricSpec, closed: dict[str, int]) -> int:
    """How many label sets ``spec`` can have, for one env (and one GPU)."""
    n = 1
    for label in spec.labels:
        if label in ("env_id", "device", "gpu", "UUID"):
            continue
        if label == "op":  # a controller's op, or a collective's
            n *= len(Op) if spec.name == "esper_actions_total" else len(COLLECTIVE_OPS)
        elif label == "reason":
            n *= _reasons(spec)
        elif label not in ("from_stage", "to_stage"):  # counted once below, as transitions
            n *= closed[label]
    if "from_stage" in spec.labels:
        n *= sum(len(targets) for targets in VALID_TRANSITIONS.values())
    return n


_REASON_SOURCES = {
    "esper_seed_culled_total": ET.SEED_CULLED,
    "esper_governor_rollbacks_total": ET.GOVERNOR_ROLLBACK,
    "esper_counterfactual_unavailable_total": ET.COUNTERFACTUAL_COMPUTED,
}
"""Families labelled ``reason``, and the event whose closed set of reasons they count."""


def _reasons(spec: MetricSpec) -> int:
    return len(allowed_values(_REASON_SOURCES[spec.name], "reason"))
