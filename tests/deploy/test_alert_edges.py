"""Counter alerts at the edges of a run, as promtool unit tests of the shipped rules.

A run's series go stale the moment its target disappears. An alert that watches a counter for
new increments must still fire, for longer than Alertmanager's ``group_wait``, when Prometheus
saw the increment in only one scrape before the job ended: the bad timing that made a short run
with an anomaly near its end page no one. Each counter alert gets these cases:

- a series born above zero that goes stale after one scrape fires for at least 30 s;
- a series seen once at zero, then once above, fires; so do two such scrapes almost a whole
  window apart (the zero leaves the window while the job is gone);
- a finished run with no new increments stays silent after its end, and so does a clean run.

The cases are written here from one table and run by ``promtool test rules`` against
``deploy/prometheus/alerts.yml`` with its annotations left out (``alerts_test.yml`` checks
those), so a new counter alert needs one table row.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._stack import DEPLOY

SCRAPE = 15  # seconds between scrapes (and rule evaluations) in the cases


@dataclass(frozen=True)
class CounterAlert:
    name: str
    metric: str
    labels: dict[str, str]
    """The series' labels; those the rule sums by come back on the alert."""
    by: tuple[str, ...]
    window_s: int
    threshold: int
    """The smallest increase that fires."""
    for_s: int = 0


TRAINER = {"job": "esper-trainer", "instance": "127.0.0.1:9100", "run_id": "ppo-1"}
COUNTER_ALERTS = (
    CounterAlert("EsperExplodingGradients", "esper_gradient_anomalies_total",
                 {**TRAINER, "scope": "host", "kind": "exploding"},
                 ("job", "instance", "scope"), 300, 1),
    CounterAlert("EsperNaNGradients", "esper_gradient_anomalies_total",
                 {**TRAINER, "scope": "policy", "kind": "nan"},
                 ("job", "instance", "scope"), 300, 1),
    CounterAlert("EsperLossSpikes", "esper_gradient_anomalies_total",
                 {**TRAINER, "scope": "host", "kind": "loss_spike"}, ("job", "instance"), 900, 1),
    CounterAlert("EsperVanishingSeedGradients", "esper_gradient_anomalies_total",
                 {**TRAINER, "scope": "seed", "kind": "vanishing"},
                 ("job", "instance"), 600, 3, for_s=120),
    CounterAlert("EsperGovernorRollbackStorm", "esper_governor_rollbacks_total",
                 {**TRAINER, "env_id": "0", "reason": "nan_loss"}, ("job", "instance"), 900, 3),
    CounterAlert("EsperTelemetryLost", "esper_telemetry_backend_lost_total",
                 {**TRAINER, "backend": "file"}, ("job", "instance", "backend"), 300, 1),
    CounterAlert("EsperTelemetryDropping", "esper_telemetry_events_dropped_total",
                 {**TRAINER, "backend": "otel"}, ("job", "instance"), 300, 1, for_s=60),
    CounterAlert("EsperTraceExportFailing", "otelcol_exporter_send_failed_spans_total",
                 {"job": "otel-collector", "instance": "otel-collector:8888",
                  "exporter": "otlp"}, ("job", "instance", "exporter"), 300, 1),
    CounterAlert("EsperAlertDeliveryFailing", "alertmanager_notifications_failed_total",
                 {"job": "alertmanager", "instance": "alertmanager:9093",
                  "integration": "slack"}, ("job", "instance", "integration"), 600, 1),
)  # fmt: skip


def _rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _selector(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _at(seconds: int) -> str:
    return f"{seconds}s"


def _cases(a: CounterAlert, severity: str) -> list[dict[str, Any]]:
    n, w, f = a.threshold, a.window_s, a.for_s
    series = _selector(a.metric, a.labels)
    fired = [{"exp_labels": {**{k: a.labels[k] for k in a.by}, "severity": severity}}]

    def case(name: str, values: str, checks: list[tuple[int, bool]]) -> dict[str, Any]:
        return {
            "name": f"{a.name}: {name}",
            "interval": _at(SCRAPE),
            "input_series": [{"series": series, "values": values}],
            "alert_rule_test": [
                {"eval_time": _at(t), "alertname": a.name, "exp_alerts": fired if on else []}
                for t, on in checks
            ],
        }

    gap = w // SCRAPE - 2  # scrapes missed between two samples almost a window apart
    last = SCRAPE * (gap + 1)  # when the second of those is taken
    steady = 2 * w // SCRAPE + 4  # a run longer than two windows
    end = SCRAPE * (steady + 1)  # when its series go stale
    return [
        case("born above zero, stale after one scrape",
             f"_ {n} stale", [(SCRAPE + f, True), (SCRAPE + f + 30, True)]),
        case("seen once at zero, then once above, then gone",
             f"_ 0 {n} stale", [(SCRAPE, False), (2 * SCRAPE + f, True),
                                (2 * SCRAPE + f + 30, True)]),
        case("two scrapes almost a window apart, then gone",
             f"0 _x{gap} {n} stale", [(last + f, True), (last + f + 30, True),
                                      (w + SCRAPE + f, True)]),
        case("a finished run with no new increments stays silent",
             f"0 {n}+0x{steady} stale", [(end - SCRAPE, False), (end + SCRAPE, False),
                                         (end + w // 2, False), (end + w + SCRAPE, False)]),
        case("a clean run never fires",
             f"0+0x{steady} stale", [(SCRAPE, False), (w, False), (end + SCRAPE, False)]),
    ]  # fmt: skip


def test_every_counter_alert_has_edge_cases_and_reads_no_instant_counter() -> None:
    rules = _rules()
    table = {a.name for a in COUNTER_ALERTS}
    watching_counters = {
        name for name, r in rules.items() if re.search(r"\bincrease\(|_total\b", r["expr"])
    }
    # EsperGPUIdle reads increase() only to know that the trainer is alive and stepping, while
    # its GPU idles: a job that is gone is not wasting a GPU, so it must not fire past the end.
    assert watching_counters - {"EsperGPUIdle"} == table
    for a in COUNTER_ALERTS:
        expr = " ".join(rules[a.name]["expr"].split())
        assert f"last_over_time({a.metric}" in expr, a.name
        assert "offset" in expr, a.name
        assert rules[a.name].get("for", "0m") == (f"{a.for_s // 60}m" if a.for_s else "0m")


def test_counter_alerts_fire_past_the_end_of_a_run(tmp_path: Path) -> None:
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in shipped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # alerts_test.yml checks them
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(shipped))
    rules = _rules()
    tests = [c for a in COUNTER_ALERTS for c in _cases(a, rules[a.name]["labels"]["severity"])]
    doc = {"rule_files": ["alerts.yml"], "evaluation_interval": _at(SCRAPE), "tests": tests}
    (tmp_path / "edges_test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    run = subprocess.run(["promtool", "test", "rules", "edges_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(tests) == 5 * len(COUNTER_ALERTS)


@pytest.mark.parametrize("alert", COUNTER_ALERTS[:1], ids=lambda a: a.name)
def test_the_old_instant_form_fails_the_first_case(alert: CounterAlert, tmp_path: Path) -> None:
    """The cases catch the bug they are for: the rule as it was (an instant ``x unless x
    offset W`` half) stops firing once the one-scrape series goes stale."""
    sel = f'{alert.metric}{{kind="exploding"}}'
    old = (f"sum by (job, instance, scope) (increase({sel}[5m])) > 0 or sum by (job, instance, "
           f"scope) ({sel} unless {sel} offset 5m) > 0")  # fmt: skip
    rule = {"alert": alert.name, "expr": old, "labels": {"severity": "critical"}}
    (tmp_path / "alerts.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "old", "rules": [rule]}]})
    )
    doc = {"rule_files": ["alerts.yml"], "evaluation_interval": _at(SCRAPE),
           "tests": _cases(alert, "critical")[:1]}  # fmt: skip
    (tmp_path / "edges_test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    run = subprocess.run(["promtool", "test", "rules", "edges_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode != 0
    assert f"time: {SCRAPE + 30}s" in run.stdout + run.stderr
