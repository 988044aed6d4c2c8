"""Grafana dashboards: generated from code, every query answered by a real Prometheus."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from esper.karn.grafana import (
    DASHBOARDS,
    GPU_DASHBOARD,
    REQUIRES_CUDA,
    REQUIRES_RANKS,
    panel_queries,
    render,
)
from esper.nissa.prometheus.catalogue import METRICS
from esper.scripts import cli
from tests._stack import DEPLOY, REPO, Stack, panel_promql, query, query_range, wait_until

DASHBOARD_DIR = REPO / "dashboards"


def _all_queries() -> list[tuple[str, str, str, str, str]]:
    return [
        (name, *q) for name in DASHBOARDS for q in panel_queries((DASHBOARD_DIR / name).read_text())
    ]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_checked_in_dashboard_is_what_the_code_generates(name: str) -> None:
    assert (DASHBOARD_DIR / name).read_text(encoding="utf-8") == render(name), (
        f"dashboards/{name} is stale: run 'esper dashboards'"
    )


def test_esper_dashboards_check_passes() -> None:
    assert cli.main(["dashboards", "--check", "--out", str(DASHBOARD_DIR)]) == 0


def test_every_datasource_uid_a_panel_uses_is_provisioned() -> None:
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "esper.yaml").read_text()
    )
    uids = {d["uid"] for d in provisioned["datasources"]}
    used = {uid for *_, uid, _ in _all_queries()}
    assert used
    assert used <= uids, used - uids


def _recording_rules() -> dict[str, str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "recording.yml").read_text())
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def test_every_catalogue_metric_is_on_a_panel() -> None:
    rules = _recording_rules()
    text = "\n".join(expr for *_, expr in _all_queries())
    for record, expr in rules.items():
        if record in text:
            text += "\n" + expr
    missing = [
        m.name for m in METRICS if not re.search(rf"\b{m.name}(_bucket|_sum|_count)?\b", text)
    ]
    assert not missing, f"no panel shows {missing}"


def test_units_are_set_on_every_panel() -> None:
    for name in DASHBOARDS:
        doc = json.loads((DASHBOARD_DIR / name).read_text())
        for panel in doc["panels"]:
            if panel["type"] in ("row", "table"):
                continue
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']}"


def _substitute(expr: str, stack: Stack) -> str:
    run = query(stack.prometheus, "max_over_time(esper_run_info[1h])")[0]["metric"]["run_id"]
    return panel_promql(expr, run)


@pytest.mark.slow
@pytest.mark.parametrize("detail", ["env", "rank"])
def test_every_panel_query_returns_data_from_a_real_run(
    detail: str, request: pytest.FixtureRequest
) -> None:
    """Each Prometheus panel query, template variables substituted, answers at least one
    series over the run's window (the run injects faults, so fault panels have data too), at
    each ``--metrics-detail``: every env's series, and the envs folded over the rank."""
    stack: Stack = request.getfixturevalue("stack" if detail == "env" else "rank_stack")
    checked = 0
    for name, title, desc, uid, expr in _all_queries():
        if uid != "esper-prometheus" or REQUIRES_CUDA in desc or name == GPU_DASHBOARD:
            continue  # Tempo needs a trace store; GPU and CUDA panels: test_gpu_dashboard.py
        if REQUIRES_RANKS in desc:
            continue  # tests/runs/test_distributed.py, on a 2-rank run
        promql = _substitute(expr, stack)

        def has_data(q: str = promql) -> bool:
            return bool(query_range(stack.prometheus, q, stack.started, time.time()))

        wait_until(has_data, 60, f"data for {name} / {title}: {promql}", step=1.0)
        checked += 1
    assert checked >= 40


def test_template_variables_resolve_against_the_real_run(stack: Stack) -> None:
    doc = json.loads((DASHBOARD_DIR / "esper-overview.json").read_text())
    variables = {v["name"]: v["query"] for v in doc["templating"]["list"]}
    assert set(variables) == {"run", "instance", "rank", "env"}
    runs = query(stack.prometheus, "group by (run_id) (max_over_time(esper_run_info[1h]))")
    assert len(runs) == 1
    envs = query(stack.prometheus, "group by (env_id) (max_over_time(esper_env_val_accuracy[1h]))")
    assert {r["metric"]["env_id"] for r in envs} == {"0", "1"}


@pytest.mark.slow
def test_the_escalation_annotations_evaluate_against_the_real_run(stack: Stack) -> None:
    """Each dashboard that draws escalation windows queries a series the real run has (every
    env at 0 until an anomaly escalates it). The stack's run records at debug, where nothing
    escalates, so no window is drawn: the annotations never claim detail the record lacks.
    (Windows opening and closing: tests/simic/test_escalation.py, exporter and real runs.)"""
    drawn = 0
    for name in DASHBOARDS:
        doc = json.loads((DASHBOARD_DIR / name).read_text())
        for annotation in doc.get("annotations", {}).get("list", []):
            if "expr" not in annotation:
                continue
            promql = _substitute(annotation["expr"], stack)
            assert promql.endswith(" > 0"), promql
            series = query_range(stack.prometheus, promql.removesuffix(" > 0"), stack.started,
                                 time.time())  # fmt: skip
            assert {r["metric"]["env_id"] for r in series} == {"0", "1"}, (name, promql)
            assert query_range(stack.prometheus, promql, stack.started, time.time()) == []
            drawn += 1
    assert drawn >= 2  # the overview and the PPO dashboards


@pytest.mark.slow
def test_the_rank_detail_run_served_folded_series_and_no_env_ids(rank_stack: Stack) -> None:
    """What the panels read at rank detail is the fold: stats for gauges, sums for counters,
    and not one series of a folded family by env_id."""
    window = "[1h]"
    by_env = query(
        rank_stack.prometheus, f'count(last_over_time({{env_id!="", job="esper-trainer"}}{window}))'
    )
    assert by_env == []
    stats = query(rank_stack.prometheus,
                  f"group by (stat) (last_over_time(esper_env_val_accuracy{window}))")  # fmt: skip
    assert {r["metric"]["stat"] for r in stats} == {"mean", "min", "max"}
    epochs = query(rank_stack.prometheus, f"max_over_time(esper_env_epochs_total{window})")
    assert len(epochs) == 1  # the run's two envs, summed
    events = [
        json.loads(line) for line in (rank_stack.run_dir / "events.jsonl").read_text().splitlines()
    ]
    env_epochs = sum(1 for e in events if e["event_type"] == "EPOCH_COMPLETED"
                     and e["data"]["scope"] == "env")  # fmt: skip
    assert float(epochs[0]["value"][1]) == env_epochs
    assert {e["data"]["env_id"] for e in events if e["event_type"] == "EPOCH_COMPLETED"
            and e["data"]["scope"] == "env"} == {0, 1}  # the JSONL keeps every env  # fmt: skip
