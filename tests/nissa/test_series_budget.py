"""The series a rank serves, stated before it serves them: an upper bound that holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.nissa import NissaHub
from esper.nissa.backends import BackendSpec, attach_backends
from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.budget import SERIES_BUDGET_PER_RANK, estimate_series
from esper.nissa.prometheus.catalogue import MetricDetail

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_prometheus import _load


def _served(envs: int) -> int:
    hub = NissaHub()
    out = PrometheusOutput(hub_stats=hub.stats, cuda=False)
    _load(out, envs)
    text = out.render().decode()
    hub.close()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("envs", [1, 8, 64])
def test_the_estimate_bounds_what_a_full_load_serves(envs: int) -> None:
    estimate = estimate_series(envs=envs, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS))
    served = _served(envs)
    assert served <= estimate.total
    assert estimate.total <= 1.25 * served + 250  # a bound worth planning with


def test_per_env_lines_match_what_each_env_adds() -> None:
    estimate = estimate_series(envs=1, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS))
    per_env = (_served(33) - _served(1)) / 32
    assert per_env <= estimate.per_env <= per_env + 8  # rollbacks by reason: one seen, 4 known


def test_the_startup_line_states_it_and_warns_over_budget() -> None:
    lines: list[str] = []
    big = estimate_series(envs=400, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS))
    assert big.over_budget
    setup = attach_backends(NissaHub(), BackendSpec(metrics_port=0, series_estimate=big),
                            announce=lines.append)  # fmt: skip
    assert f"(up to {big.total:,} series on this rank, env detail)" in lines[0]
    assert lines[1].startswith(f"warning: /metrics: up to {big.total:,} series")
    assert f"over the budget of {SERIES_BUDGET_PER_RANK:,} per rank" in lines[1]
    # The way out, with what it would serve.
    folded = estimate_series(envs=400, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS),
                             detail=MetricDetail.RANK)  # fmt: skip
    assert "--metrics-detail rank folds the per-env series" in lines[1]
    assert f"({folded.total:,} series; the JSONL keeps every env)" in lines[1]
    setup.hub.close()


def test_at_rank_detail_the_same_envs_are_within_budget_and_say_so() -> None:
    lines: list[str] = []
    folded = estimate_series(envs=400, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS),
                             detail=MetricDetail.RANK)  # fmt: skip
    assert not folded.over_budget
    spec = BackendSpec(metrics_port=0, series_estimate=folded, metrics_detail=MetricDetail.RANK)
    setup = attach_backends(NissaHub(), spec, announce=lines.append)
    assert f"(up to {folded.total:,} series on this rank, rank detail)" in lines[0]
    assert len(lines) == 1 or not lines[1].startswith("warning")
    assert setup.prometheus is not None
    assert setup.prometheus.mapping.detail is MetricDetail.RANK
    setup.hub.close()
