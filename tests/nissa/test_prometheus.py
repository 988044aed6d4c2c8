"""The Prometheus exporter: its catalogue, its mapping of events, and its /metrics endpoint."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from esper.leyline import (
    CATALOGUE,
    COLLECTIVE_OPS,
    BackendConfigError,
    TelemetryEvent,
    TelemetryEventType,
    example_payload,
    make_event,
)
from esper.nissa import NissaHub
from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus import mapping as metric_mapping
from esper.nissa.prometheus.catalogue import (
    CUDA_STATS,
    EVENT_COUNT,
    EVENT_TIME,
    HUB_STATS,
    METRICS,
    MetricDetail,
    MetricKind,
    MetricSpec,
    Update,
    derived,
    render_metrics_markdown,
)
from esper.nissa.prometheus.cuda import CudaCollector
from esper.nissa.prometheus.mapping import event_fed, families
from esper.nissa.prometheus.targets import process_start_ticks
from tests._tls import self_signed

ET = TelemetryEventType
DOCS = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"

SPEC_NAMES = """
esper_run_info esper_telemetry_events_total esper_telemetry_events_dropped_total
esper_ppo_updates_total esper_ppo_update_duration_seconds esper_ppo_grad_norm
esper_ppo_policy_loss esper_ppo_value_loss esper_ppo_entropy esper_ppo_kl_divergence
esper_ppo_clip_fraction esper_ppo_explained_variance esper_ppo_learning_rate
esper_ppo_head_entropy esper_ppo_head_grad_norm esper_env_step_duration_seconds
esper_dataloader_wait_seconds esper_env_fps esper_action_mask_hit_ratio
esper_action_mask_hits_total esper_action_mask_checks_total esper_actions_total
esper_episodes_completed_total esper_batch_avg_accuracy esper_batch_rolling_accuracy
esper_batch_avg_reward esper_env_val_accuracy esper_env_val_loss esper_host_grad_norm
esper_seed_germinated_total esper_seed_fossilized_total esper_seed_culled_total
esper_seed_stage_transitions_total esper_seeds esper_seed_alpha esper_seed_gradient_norm
esper_seed_gradient_health esper_gradient_anomalies_total esper_governor_rollbacks_total
esper_reward_component esper_counterfactual_unavailable_total
""".split()


def test_catalogue_has_every_contract_family_with_conventional_names() -> None:
    names = {m.name for m in METRICS}
    assert set(SPEC_NAMES) <= names
    for m in METRICS:
        assert m.name.startswith("esper_")
        assert (m.kind is MetricKind.COUNTER) == m.name.endswith("_total"), m.name
        assert "seed_id" not in m.labels
        assert "event_id" not in m.labels
        if m.kind is MetricKind.HISTOGRAM:
            assert m.name.endswith("_seconds")
            assert list(m.buckets) == sorted(m.buckets)


def test_every_metric_source_is_a_catalogue_field() -> None:
    fields = {(t.name, v): {f.name for f in spec.fields} for (t, v), spec in CATALOGUE.items()}
    for m in METRICS:
        if not m.source or m.source == "event_type":
            continue
        if m.source.startswith(HUB_STATS):  # read from the hub's counts when scraped
            assert m not in event_fed(), m.name
            continue
        if m.source.endswith((f" {EVENT_COUNT}", f" {EVENT_TIME}")):  # no payload field
            where = m.source.rsplit(" (", 1)[0]
            event, _, variant = where.partition(":")
            assert (event, variant or None) in fields, m.name
            continue
        if m.source.startswith(CUDA_STATS):  # read from torch's allocator when scraped
            key = m.source.removeprefix(f"{CUDA_STATS}: ")
            assert (m.name, key) in CudaCollector._FIELDS, m.name
            continue
        where, _, field = m.source.partition(".")
        event, _, variant = where.partition(":")
        declared = fields[(event, variant or None)]
        if "{head}" in field:
            assert all(field.replace("{head}", h) in declared for h in ("op", "slot")), m.name
        else:
            assert field in declared, f"{m.name}: {m.source} is not in the payload catalogue"


def test_docs_metrics_md_is_what_the_catalogue_generates() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_metrics_markdown(), (
        "docs/METRICS.md is stale: run 'esper docs'"
    )


def _sample(spec_key: tuple[TelemetryEventType, str | None], **over: object) -> TelemetryEvent:
    """A complete event for a catalogue entry (placeholders, then ``over``)."""
    return make_event(spec_key[0], example_payload(*spec_key, **over))


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_events_become_metrics() -> None:
    out = PrometheusOutput(cuda=False)
    r = out.registry
    out.emit(
        _sample(
            (ET.TRAINING_STARTED, None),
            run_id="r1",
            task="digits",
            mode="ppo",
            reward_mode="shaped",
        )
    )
    out.emit(
        _sample(
            (ET.PPO_UPDATE_COMPLETED, None),
            update_time_ms=30.0,
            grad_norm=4.0,
            head_op_entropy=0.7,
            entropy_collapsed=True,
            early_stop_epoch=None,
        )
    )
    seeds = {
        "mid": {
            "stage": "BLENDING",
            "blueprint_id": "norm",
            "alpha": 0.5,
            "accuracy_delta": 1.0,
            "epochs_in_stage": 2,
            "gradient_norm": 0.3,
            "gradient_total_norm": 1.2,
            "gradient_health": 0.9,
            "has_vanishing": False,
            "has_exploding": False,
        }
    }
    out.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=1, val_accuracy=91.0, seeds=seeds))
    out.emit(
        _sample(
            (ET.ANALYTICS_SNAPSHOT, "throughput"),
            env_id=1,
            step_time_ms=120.0,
            dataloader_wait_ms=0.5,
            fps=900.0,
        )
    )
    out.emit(
        _sample(
            (ET.ANALYTICS_SNAPSHOT, "mask_hit_rates"),
            mask_hits={"op": 3, "slot": 1},
            mask_total={"op": 4, "slot": 4},
        )
    )
    out.emit(
        _sample(
            (ET.ANALYTICS_SNAPSHOT, "action_distribution"),
            action_counts={"WAIT": 5, "CULL": 2},
            success_counts={"WAIT": 5, "CULL": 1},
        )
    )
    out.emit(_sample((ET.SEED_CULLED, None), slot_id="mid", blueprint_id="norm", reason="rollback"))
    out.emit(_sample((ET.GRADIENT_ANOMALY, None), scope="host", kind="exploding"))
    out.emit(_sample((ET.GOVERNOR_ROLLBACK, None), env_id=0, reason="nan_loss"))
    out.emit(
        _sample(
            (ET.BATCH_EPOCH_COMPLETED, None),
            start_episode=0,
            episodes_completed=4,
            avg_accuracy=90.0,
        )
    )
    out.emit(_sample((ET.COUNTERFACTUAL_COMPUTED, None), available=False, reason="not_blended"))
    assert (
        _value(r, "esper_run_info", run_id="r1", task="digits", mode="ppo", reward_mode="shaped")
        == 1
    )
    assert _value(r, "esper_ppo_update_duration_seconds_sum") == pytest.approx(0.03)
    assert _value(r, "esper_ppo_grad_norm") == 4.0
    assert _value(r, "esper_ppo_head_entropy", head="op") == 0.7
    assert _value(r, "esper_ppo_entropy_collapsed") == 1.0
    assert _value(r, "esper_env_val_accuracy", env_id="1") == pytest.approx(0.91)
    assert _value(r, "esper_seed_alpha", env_id="1", slot_id="mid") == 0.5
    assert _value(r, "esper_seed_gradient_norm", env_id="1", slot_id="mid") == 0.3
    assert _value(r, "esper_seed_gradient_total_norm", env_id="1", slot_id="mid") == 1.2
    assert _value(r, "esper_seeds", stage="BLENDING") == 1
    assert _value(r, "esper_env_step_duration_seconds_bucket", env_id="1", le="0.25") == 1
    assert _value(r, "esper_action_mask_hit_ratio", head="op") == 0.75
    assert _value(r, "esper_action_mask_checks_total", head="slot") == 4
    assert _value(r, "esper_actions_total", op="CULL", success="false") == 1
    assert (
        _value(r, "esper_seed_culled_total", slot_id="mid", blueprint_id="norm", reason="rollback")
        == 1
    )
    assert _value(r, "esper_gradient_anomalies_total", scope="host", kind="exploding") == 1
    assert _value(r, "esper_gradient_anomalies_total", scope="seed", kind="nan") == 0  # pre-set
    assert _value(r, "esper_governor_rollbacks_total", env_id="0", reason="nan_loss") == 1
    assert _value(r, "esper_episodes_completed_total") == 4
    assert _value(r, "esper_batch_avg_accuracy") == pytest.approx(0.9)
    assert _value(r, "esper_counterfactual_unavailable_total", reason="not_blended") == 1
    assert _value(r, "esper_telemetry_events_total", event_type="SEED_CULLED") == 1


def test_a_slot_that_empties_loses_its_series_and_stage_counts_follow() -> None:
    out = PrometheusOutput(cuda=False)
    seed = {"stage": "TRAINING", "blueprint_id": "norm", "alpha": 0.0, "accuracy_delta": 0.0,
            "epochs_in_stage": 1, "gradient_norm": 0.3, "gradient_total_norm": 0.6,
            "gradient_health": 1.0,
            "has_vanishing": False, "has_exploding": False}  # fmt: skip
    out.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=0, seeds={"mid": seed, "late": seed}))
    assert _value(out.registry, "esper_seeds", stage="TRAINING") == 2
    out.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=0, seeds={"late": seed}))
    assert _value(out.registry, "esper_seed_alpha", env_id="0", slot_id="mid") is None
    assert _value(out.registry, "esper_seed_alpha", env_id="0", slot_id="late") == 0.0
    assert _value(out.registry, "esper_seeds", stage="TRAINING") == 1


def test_a_rank_serves_its_collective_series_before_the_first_collective() -> None:
    # A run that trains for less than two scrape intervals still gives rate() two samples:
    # one of the empty series before the first collective, one after (seen once in CI: a
    # 2-second run showed only rank 1 in the collective panels).
    ranked = generate_latest(PrometheusOutput(cuda=False, multi_rank=True).registry).decode()
    for op in COLLECTIVE_OPS:
        assert f'esper_collective_wait_seconds_count{{op="{op}"}} 0.0' in ranked
    single = generate_latest(PrometheusOutput(cuda=False).registry).decode()
    assert "esper_collective_wait_seconds_count" not in single  # no empty series in one process


def test_labelled_children_are_bound_once(monkeypatch: pytest.MonkeyPatch) -> None:
    out = PrometheusOutput(cuda=False)
    calls = 0
    gauge = out.mapping.metric("esper_env_val_loss")
    real = gauge.labels

    def labels(*values: str) -> object:
        nonlocal calls
        calls += 1
        return real(*values)

    monkeypatch.setattr(gauge, "labels", labels)
    for _ in range(100):
        out.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=3))
    assert calls == 1


def test_dropped_events_come_from_the_hub() -> None:
    hub = NissaHub(capacity=0)
    out = PrometheusOutput(hub_stats=hub.stats, cuda=False)
    hub.add_backend(out)
    hub.emit(_sample((ET.EPOCH_COMPLETED, "env")))  # dropped: the ingress queue holds nothing
    assert _value(out.registry, "esper_telemetry_events_dropped_total", backend="hub") == 1
    hub.close()


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:  # noqa: S310 - loopback
        assert resp.status == 200
        return str(resp.read().decode())


def test_metrics_are_served_on_loopback_and_pass_promtool(tmp_path: Path) -> None:
    out = PrometheusOutput(cuda=False)
    port = out.serve(0)
    try:
        out.emit(_sample((ET.GRADIENT_ANOMALY, None), scope="seed", kind="vanishing"))
        text = _get(f"http://127.0.0.1:{port}/metrics")
        assert 'esper_gradient_anomalies_total{kind="vanishing",scope="seed"} 1.0' in text
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert lint.stdout + lint.stderr == ""
        assert out.address == ("127.0.0.1", port)
    finally:
        out.close()
        out.close()


def test_a_port_in_use_is_a_clear_error_naming_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BackendConfigError, match=rf"cannot serve /metrics on 127.0.0.1:{port}"):
            PrometheusOutput(cuda=False).serve(port)


def test_tls_serves_metrics_to_a_client_that_trusts_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    out = PrometheusOutput(cuda=False)
    port = out.serve(0, certfile=str(cert), keyfile=str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        assert "esper_seeds" in _get(f"https://127.0.0.1:{port}/metrics", context)
        with pytest.raises(urllib.error.URLError):
            _get(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context())
    finally:
        out.close()


def test_service_discovery_file_is_written_atomically_and_removed_at_close(tmp_path: Path) -> None:
    out = PrometheusOutput(cuda=False)
    port = out.serve(0)
    path = out.write_sd_file(tmp_path / "targets", host="127.0.0.1", labels={"run_id": "r9"})
    assert path.name == "esper-r9.json"
    owner = {  # who serves the target, for `esper targets prune`; Prometheus drops __ labels
        "__esper_host": socket.gethostname(),
        "__esper_pid": str(os.getpid()),
        "__esper_start": process_start_ticks(os.getpid()),
    }
    assert json.loads(path.read_text()) == [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"run_id": "r9", **owner}}
    ]
    assert [p.name for p in path.parent.iterdir()] == ["esper-r9.json"]
    out.close()
    assert not path.exists()


def test_registry_is_never_the_global_one() -> None:
    from prometheus_client import REGISTRY  # noqa: TID251 - checking we do not use it

    before = set(families(REGISTRY))
    PrometheusOutput(cuda=False)
    assert set(families(REGISTRY)) == before
    assert "esper_seeds" in generate_latest(PrometheusOutput(cuda=False).registry).decode()


def test_a_metric_derived_from_one_field_is_one_catalogue_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new metric that reads one payload field needs no exporter code: its MetricSpec (with
    ``update``) is all, and the exporter registers and updates it."""
    extra = MetricSpec(
        "esper_env_train_loss", MetricKind.GAUGE, "Training loss of one env.", ("env_id",), "",
        "EPOCH_COMPLETED:env.train_loss", update=Update.SET,
    )  # fmt: skip
    monkeypatch.setattr(metric_mapping, "METRICS", (*metric_mapping.METRICS, extra))
    out = PrometheusOutput(cuda=False)
    out.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=4, train_loss=0.75, seeds={}))
    assert _value(out.registry, "esper_env_train_loss", env_id="4") == 0.75
    folded = PrometheusOutput(cuda=False, detail=MetricDetail.RANK)  # and it folds, as a gauge
    for env, loss in ((4, 0.75), (5, 0.25)):
        folded.emit(_sample((ET.EPOCH_COMPLETED, "env"), env_id=env, train_loss=loss, seeds={}))
    folded.render()  # a scrape folds what was written
    assert _value(folded.registry, "esper_env_train_loss", stat="mean") == 0.5
    assert _value(folded.registry, "esper_env_train_loss", stat="max") == 0.75


def test_every_derived_metric_reads_a_real_field_and_labels_it_by_payload_fields() -> None:
    for spec in METRICS:
        if spec.update is None:
            continue
        how = derived(spec)
        variant = how.variant
        fields = {f.name for f in CATALOGUE[(TelemetryEventType[how.event_type], variant)].fields}
        assert how.field is None or how.field in fields, spec.name
        assert set(spec.labels) <= fields, spec.name
        if spec.kind is MetricKind.COUNTER:
            assert how.update is Update.COUNT, spec.name
