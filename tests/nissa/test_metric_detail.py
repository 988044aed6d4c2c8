"""``--metrics-detail rank``: per-env families folded over a rank's envs, exactly.

The same events go through an exporter at env detail and one at rank detail; after every event
each folded series must equal the fold of the env-level series: a summed family the sum over
``env_id`` (counters and histograms add up), a gauge folded to stats the mean, min and max of
the envs that have the series. The rendered text stays what ``generate_latest`` writes, and a
64-env rank serves no more series than a one-env rank.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.budget import estimate_series
from esper.nissa.prometheus.catalogue import (
    FOLD_STATS,
    METRICS,
    METRICS_BY_NAME,
    Fold,
    MetricDetail,
    fold_of,
    served_labels,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_prometheus import _load

ET = TelemetryEventType
ENV, RANK = MetricDetail.ENV, MetricDetail.RANK
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _event(kind: tuple[TelemetryEventType, str | None], **over: object) -> TelemetryEvent:
    return make_event(kind[0], example_payload(*kind, **over))


def _seed(rng: random.Random) -> dict[str, object]:
    return {"stage": rng.choice(["TRAINING", "BLENDING"]), "blueprint_id": "norm",
            "alpha": rng.random(), "accuracy_delta": 1.0, "epochs_in_stage": 2,
            "gradient_norm": rng.random(), "gradient_total_norm": rng.uniform(0, 5),
            "gradient_health": rng.random(), "has_vanishing": False,
            "has_exploding": False}  # fmt: skip


def _script(envs: int, epochs: int, seed: int = 7) -> list[TelemetryEvent]:
    """A run's worth of per-env writes with different values per env: seeds that come and go
    (series born and removed), rollbacks, step times, escalations of one env and of all."""
    rng = random.Random(seed)
    events = [_event((ET.TRAINING_STARTED, None), slot_ids=list(SLOT_IDS),
                     blueprint_ids=list(BLUEPRINT_IDS))]  # fmt: skip
    for epoch in range(epochs):
        for env in range(envs):
            slots = rng.sample(list(SLOT_IDS), rng.randint(0, len(SLOT_IDS)))
            # A NaN loss in env 0 (the first a fold meets) in epochs 2 and 3, in every env of 4.
            nan = epoch == 4 or (epoch in (2, 3) and env == 0)
            events.append(_event(
                (ET.EPOCH_COMPLETED, "env"), env_id=env, val_accuracy=rng.uniform(0, 100),
                val_loss=math.nan if nan else rng.uniform(0, 3), host_grad_norm=rng.uniform(0, 50),
                seeds={slot: _seed(rng) for slot in slots}))  # fmt: skip
            events.append(_event(
                (ET.ANALYTICS_SNAPSHOT, "throughput"), env_id=env, fps=rng.uniform(10, 1000),
                step_time_ms=rng.uniform(1, 900),
                dataloader_wait_ms=rng.uniform(0, 20)))  # fmt: skip
            if rng.random() < 0.2:
                events.append(_event((ET.GOVERNOR_ROLLBACK, None), env_id=env,
                                     reason=rng.choice(["nan_loss", "divergence"])))  # fmt: skip
        if epoch == 1:
            events.append(_event((ET.TELEMETRY_LEVEL_CHANGED, None), env_id=envs - 1,
                                 from_level="normal", to_level="debug"))  # fmt: skip
        if epoch == 2:
            events.append(_event((ET.TELEMETRY_LEVEL_CHANGED, None), env_id=None,
                                 from_level="normal", to_level="debug"))  # fmt: skip
        if epoch == 3:
            events.append(_event((ET.TELEMETRY_LEVEL_CHANGED, None), env_id=None,
                                 from_level="debug", to_level="normal"))  # fmt: skip
    return events


def _samples(registry: CollectorRegistry) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _family_of(sample_name: str) -> str | None:
    for suffix in ("", "_total", "_bucket", "_count", "_sum"):
        base = sample_name.removesuffix(suffix) if suffix else sample_name
        spec = METRICS_BY_NAME.get(base) or METRICS_BY_NAME.get(base + "_total")
        if spec is not None and (suffix or sample_name == spec.name):
            return spec.name
    return None


def _folded(env_level: Samples) -> Samples:
    """What rank detail must serve, computed from the env-level samples."""
    groups: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = defaultdict(list)
    out: Samples = {}
    for (name, labels), value in env_level.items():
        family = _family_of(name)
        spec = METRICS_BY_NAME[family] if family is not None else None
        if spec is None or fold_of(spec) is None:
            out[(name, labels)] = value
            continue
        rest = frozenset((k, v) for k, v in labels if k != "env_id")
        groups[(name, rest)].append(value)
    for (name, rest), values in groups.items():
        spec = METRICS_BY_NAME[_family_of(name) or ""]
        if fold_of(spec) is Fold.SUM:
            out[(name, rest)] = sum(values)
            continue
        # PromQL's avg, min and max: NaN spreads to the mean; min and max skip it.
        numbers = [v for v in values if not math.isnan(v)] or [math.nan]
        stats = {"mean": sum(values) / len(values), "min": min(numbers), "max": max(numbers)}
        for stat in FOLD_STATS:
            out[(name, rest | {("stat", stat)})] = stats[stat]
    return out


def test_every_folded_series_equals_the_fold_of_the_env_series_after_every_event() -> None:
    env_out, rank_out = PrometheusOutput(cuda=False), PrometheusOutput(cuda=False, detail=RANK)
    events = _script(envs=5, epochs=6)
    folded_families = {s.name for s in METRICS if fold_of(s) is not None}
    seen_folds: set[str] = set()
    for event in events:
        env_out.emit(event)
        rank_out.emit(event)
        rank_out.render()  # folds what the event wrote, as a scrape does
        want, got = _folded(_samples(env_out.registry)), _samples(rank_out.registry)
        assert want.keys() <= got.keys(), (event.event_type, want.keys() - got.keys())
        for name, labels in got.keys() - want.keys():
            # A summed family left with no labels is one series from the start, at zero, as
            # every unlabelled counter is; at env detail it has no env yet.
            assert not labels - {("le", v) for _, v in labels}, (name, labels)
            assert fold_of(METRICS_BY_NAME[_family_of(name) or ""]) is Fold.SUM
            assert got[(name, labels)] == 0, (event.event_type, name, labels)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), (event.event_type, key)
        seen_folds |= {_family_of(name) or "" for name, _ in got} & folded_families
    assert seen_folds == folded_families  # every folded family was written and checked
    assert not any(("env_id", "0") in labels for _, labels in _samples(rank_out.registry))


def test_a_slot_emptied_in_every_env_leaves_no_stats_behind() -> None:
    out = PrometheusOutput(cuda=False, detail=RANK)
    seed = _seed(random.Random(1))
    for env in range(3):
        out.emit(_event((ET.EPOCH_COMPLETED, "env"), env_id=env, seeds={SLOT_IDS[0]: seed}))
    text = out.render().decode()
    assert f'esper_seed_alpha{{slot_id="{SLOT_IDS[0]}",stat="mean"}}' in text
    out.emit(_event((ET.EPOCH_COMPLETED, "env"), env_id=0, seeds={}))
    assert f'esper_seed_alpha{{slot_id="{SLOT_IDS[0]}",stat="mean"}}' in out.render().decode()
    for env in (1, 2):
        out.emit(_event((ET.EPOCH_COMPLETED, "env"), env_id=env, seeds={}))
    assert "esper_seed_alpha{" not in out.render().decode()
    assert out.render() == generate_latest(out.registry)


def test_rank_detail_renders_what_generate_latest_does_and_promtool_accepts(
    tmp_path: Path,
) -> None:
    out = PrometheusOutput(cuda=False, multi_rank=True, detail=RANK)
    assert out.render() == generate_latest(out.registry)
    for event in _script(envs=4, epochs=5):
        out.emit(event)
        assert out.render() == generate_latest(out.registry), event.event_type
    text = out.render()
    assert b"Folded over this rank's envs: stat is mean, min or max." in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           check=False)  # fmt: skip
    assert b"error" not in check.stderr.lower(), check.stderr


def _served_lines(envs: int, detail: MetricDetail) -> int:
    """Lines served after the render benchmark's load: every labelled family for ``envs``."""
    out = PrometheusOutput(cuda=False, detail=detail)
    _load(out, envs)
    text = out.render().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_rank_detail_does_not_grow_with_the_envs_and_the_estimate_bounds_it() -> None:
    one, many = _served_lines(1, RANK), _served_lines(64, RANK)
    assert one == many
    estimate = estimate_series(envs=64, slots=len(SLOT_IDS), blueprints=len(BLUEPRINT_IDS),
                               detail=RANK)  # fmt: skip
    assert estimate.per_env == 0
    assert many <= estimate.total <= 1.25 * many + 250
    assert _served_lines(64, ENV) > 5 * many


def test_served_labels_drop_env_id_and_add_stat_only_to_gauges_folded_to_stats() -> None:
    for spec in METRICS:
        labels = served_labels(spec, RANK)
        assert "env_id" not in labels
        assert ("stat" in labels) == (fold_of(spec) is Fold.STATS), spec.name
        assert served_labels(spec, ENV) == spec.labels
    assert fold_of(METRICS_BY_NAME["esper_env_telemetry_escalated"]) is Fold.SUM


def _selector(labels: frozenset[tuple[str, str]]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def _folds(env_level: Samples) -> dict[str, tuple[str, str | None]]:
    """PromQL's fold of every env-level folded sample series: expression -> (sample name,
    the stat it must equal, None for a sum)."""
    names = sorted({name for name, labels in env_level
                    if any(k == "env_id" for k, _ in labels)
                    and fold_of(METRICS_BY_NAME[_family_of(name) or ""]) is not None})  # fmt: skip
    exprs: dict[str, tuple[str, str | None]] = {}
    for name in names:
        if fold_of(METRICS_BY_NAME[_family_of(name) or ""]) is Fold.SUM:
            exprs[f"sum without (env_id) ({name})"] = (name, None)
        else:
            for op, stat in (("avg", "mean"), ("min", "min"), ("max", "max")):
                exprs[f"{op} without (env_id) ({name})"] = (name, stat)
    return exprs


_GOT = re.compile(r'expr: "(?P<expr>[^"]+)", time: 0s,\s+exp: nil\s+got: (?P<got>.*)')
_SAMPLE = re.compile(r"(\{[^}]*\}) (\S+?)(?:, |$)")


def _promql(env_level: Samples, exprs: list[str], tmp: Path) -> dict[str, dict[str, float]]:
    """What PromQL computes for ``exprs`` over the env-level samples: promtool evaluates each
    (with no expectation, so it prints what it got), expression -> labels -> value."""
    import yaml

    series = [{"series": f"{name}{_selector(labels)}",
               "values": "NaN" if math.isnan(v) else repr(float(v))}
              for (name, labels), v in env_level.items()]  # fmt: skip
    tests = [{"expr": e, "eval_time": "0m", "exp_samples": []} for e in exprs]
    path = tmp / "folds_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))  # fmt: skip
    done = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip
    got: dict[str, dict[str, float]] = {}
    for m in _GOT.finditer(done.stdout + done.stderr):
        got[m.group("expr")] = {labels: float(v) for labels, v in _SAMPLE.findall(m.group("got"))}
    assert set(got) == set(exprs), (done.stdout + done.stderr)[-2000:]
    return got


def test_the_folds_are_promqls_own_as_promtool_evaluates_them(tmp_path: Path) -> None:
    """The oracle is PromQL: promtool evaluates ``avg``, ``min``, ``max`` and ``sum without
    (env_id)`` over the env-level series, at the first moment with a NaN loss in env 0 and at
    the end, and the rank-level series equal what it computes (to the last bits of a sum's
    rounding, which depend on the order of the addition)."""
    env_out, rank_out = PrometheusOutput(cuda=False), PrometheusOutput(cuda=False, detail=RANK)
    events = _script(envs=5, epochs=6)
    moments = 0
    nan_seen = False
    for i, event in enumerate(events):
        env_out.emit(event)
        rank_out.emit(event)
        rank_out.render()  # folds what the event wrote, as a scrape does
        env = _samples(env_out.registry)
        has_nan = any(math.isnan(v) for v in env.values())
        if not ((has_nan and not nan_seen) or i == len(events) - 1):
            continue
        nan_seen = nan_seen or has_nan
        moments += 1
        exprs = _folds(env)
        got = _promql(env, list(exprs), tmp_path)
        rank = _samples(rank_out.registry)
        for expr, (name, stat) in exprs.items():
            served = {
                _selector(frozenset(k for k in labels if k[0] != "stat")): value
                for (n, labels), value in rank.items()
                if n == name and (stat is None or ("stat", stat) in labels)
            }
            assert served.keys() == got[expr].keys(), expr
            for labels, value in got[expr].items():
                assert served[labels] == pytest.approx(value, rel=1e-12, nan_ok=True), (
                    expr,
                    labels,
                )
    assert nan_seen
    assert moments == 2
