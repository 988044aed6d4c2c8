"""What a run report shows of a run: its curves (every point, and the figures of their tables),
what went wrong and when, the bands of escalations and alerts, the seeds' lives, and the
telemetry's own verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from esper.nissa.record.replay import RankReport, RunStatus

MAX_POINTS = 2000
"""Points drawn per series at most; longer series are thinned to each bucket's min and max."""


@dataclass(slots=True)
class Series:
    """One curve: every point of it, and the figures of the table (over every point)."""

    chart: str
    label: str
    run: int
    t: list[float] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    gaps: list[tuple[int, float, float]] = field(default_factory=list)
    """(index of the point after it, t, p) of each gap: where the series had no value (a slot
    with no seed), so the line breaks there instead of joining two seeds' lives."""

    def add(self, t: float, p: float, y: Any) -> None:
        self.t.append(t)
        self.p.append(p)
        self.y.append(num(y))

    def add_gap(self, t: float, p: float) -> None:
        if self.y and not (self.gaps and self.gaps[-1][0] == len(self.y)):
            self.gaps.append((len(self.y), t, p))

    @property
    def finite(self) -> list[float]:
        return [v for v in self.y if math.isfinite(v)]

    def stats(self) -> dict[str, Any]:
        """count, non-finite count, min, max (over finite points) and the last point."""
        finite = self.finite
        return {
            "count": len(self.y),
            "nonfinite": len(self.y) - len(finite),
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "last": self.y[-1] if self.y else None,
        }

    def drawn(self, limit: int = MAX_POINTS) -> tuple[list[int], bool]:
        """The indices of the points drawn, and whether any were left out: every point up to
        ``limit``; above it, each of ``limit // 2`` buckets keeps its lowest and highest point
        (and any non-finite one, drawn as a gap), so every peak survives."""
        n = len(self.y)
        if n <= limit:
            return list(range(n)), False
        buckets = limit // 2
        keep: list[int] = [0]
        for b in range(buckets):
            lo, hi = b * n // buckets, (b + 1) * n // buckets
            idx = [i for i in range(lo, hi) if math.isfinite(self.y[i])]
            gaps = [i for i in range(lo, hi) if not math.isfinite(self.y[i])][:1]
            chosen = set(gaps)
            if idx:
                chosen.add(min(idx, key=self.y.__getitem__))
                chosen.add(max(idx, key=self.y.__getitem__))
            keep.extend(sorted(chosen))
        keep.append(n - 1)
        return sorted(set(keep)), True


@dataclass(frozen=True, slots=True)
class Marker:
    """Something that went wrong, at its moment: drawn on every curve, listed in the table."""

    run: int
    kind: str
    """gradient_anomaly, loss_spike, rollback or regression_cull."""
    what: str
    t: float
    p: float
    ns: int
    """When it happened (Unix nanoseconds)."""
    time: str
    rank: int | None
    env: int | None
    epoch: int | None
    batch: int
    value: float | None
    threshold: float | None
    event_id: str
    trace_id: str = ""
    span_id: str = ""
    span: str = ""
    """The span's name and what it covers (``esper.episode env 0``)."""


@dataclass(frozen=True, slots=True)
class Band:
    """A stretch of the run: an escalation window (an env at debug) or an alert firing."""

    run: int
    kind: str
    """escalation or alert."""
    label: str
    t0: float
    t1: float
    p0: float
    p1: float
    open_end: bool = False
    """The record ends inside it."""


@dataclass(slots=True)
class StageSpan:
    stage: str
    t0: float
    p0: float
    t1: float = 0.0
    p1: float = 0.0
    alpha: float | None = None
    gates: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SeedLife:
    """One seed, germination to its end, stage by stage."""

    run: int
    lane: str
    seed_id: str
    blueprint: str
    stages: list[StageSpan] = field(default_factory=list)
    outcome: str = "alive"
    """fossilized, culled, episode_end (alive when its episode ended: the env starts its next
    episode afresh) or alive (still growing when the record ends: a killed run)."""
    reason: str = ""
    improvement: float | None = None


@dataclass(slots=True)
class Verdict:
    """The telemetry's own account, as far as the record holds it."""

    events: int
    files: dict[str, int]
    problems: list[str]
    warnings: list[tuple[str, str, str]]
    """(time, reason, detail) of each TELEMETRY_WARNING."""
    backends: list[dict[str, Any]]
    """Each backend's final counts, where the record carries them."""


@dataclass(slots=True)
class RunView:
    """Everything the report shows of one run."""

    index: int
    run_id: str
    status: RunStatus
    ranks: list[RankReport]
    started: dict[str, Any]
    completed: dict[str, Any] | None
    start: str
    end: str
    duration: float
    nodes: list[str]
    world_size: int
    max_epochs: int
    series: list[Series]
    markers: list[Marker]
    bands: list[Band]
    seeds: list[SeedLife]
    lanes: list[str]
    verdict: Verdict
    last_t: float
    last_p: float


def num(v: Any) -> float:
    """A recorded value as a float (None and what is no number: NaN)."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
