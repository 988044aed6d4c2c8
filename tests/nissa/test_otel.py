"""OpenTelemetry traces of the seed lifecycle: span tree, timestamps, outcomes, export."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import NissaHub, read_events
from esper.nissa.otel import OTelOutput, traces_endpoint
from esper.runs import run_training
from esper.runs.config import RunConfig
from tests._otlp import OTLPReceiver, SilentReceiver
from tests._stack import free_port

ET = TelemetryEventType


class Clock:
    """Event timestamps 1 s apart, so the test can check spans use them."""

    def __init__(self) -> None:
        self.t = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        self.t += 10**9
        return self.t


def _ev(clock: Clock, key: tuple[ET, str | None], **over: object) -> TelemetryEvent:
    data = example_payload(*key, **over)
    event = make_event(key[0], data, seed_id=data.get("seed_id"))
    event.timestamp_ns = clock()
    event.run_id = "run-1"
    return event


def _seed(
    clock: Clock, key: ET, seed: str, env: int = 0, slot: str = "mid", **over: object
) -> TelemetryEvent:
    return _ev(
        clock, (key, None), seed_id=seed, env_id=env, slot_id=slot, blueprint_id="norm", **over
    )


@pytest.fixture
def traced() -> Iterator[tuple[OTelOutput, InMemorySpanExporter, Clock]]:
    exporter = InMemorySpanExporter()
    out = OTelOutput(exporter=exporter, batch=False, run_id="run-1")
    yield out, exporter, Clock()
    out.close()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_span_tree_timestamps_and_outcomes(
    traced: tuple[OTelOutput, InMemorySpanExporter, Clock],
) -> None:
    out, exporter, clock = traced
    events = [
        _ev(
            clock,
            (ET.TRAINING_STARTED, None),
            run_id="run-1",
            mode="ppo",
            task="digits",
            max_epochs=3,
            n_envs=2,
        ),
        _seed(clock, ET.SEED_GERMINATED, "s1"),
        _seed(clock, ET.SEED_GATE_EVALUATED, "s1", gate="G0", passed=True, target_stage="TRAINING"),
        _seed(clock, ET.SEED_STAGE_CHANGED, "s1", from_stage="GERMINATED", to_stage="TRAINING"),
        _seed(clock, ET.SEED_GERMINATED, "s2", env=1, slot="late"),
        _seed(
            clock, ET.SEED_CULLED, "s2", env=1, slot="late", reason="gate_failed", improvement=-1.0
        ),
        _seed(clock, ET.SEED_STAGE_CHANGED, "s1", from_stage="TRAINING", to_stage="BLENDING"),
        _seed(clock, ET.SEED_FOSSILIZED, "s1", improvement=2.5),
        _ev(clock, (ET.GOVERNOR_ROLLBACK, None), env_id=1, reason="nan_loss", device="cpu"),
        _ev(
            clock,
            (ET.PPO_UPDATE_COMPLETED, None),
            update_time_ms=250.0,
            early_stop_epoch=None,
            batch=0,
        ),
        _seed(clock, ET.SEED_GERMINATED, "s3"),
        _ev(clock, (ET.EPOCH_COMPLETED, "aggregate"), inner_epoch=3),  # batch end
        _seed(clock, ET.SEED_GERMINATED, "s4"),  # never ends: unfinished at close
    ]
    for e in events:
        out.emit(e)
    out.close()
    spans = exporter.get_finished_spans()
    (run,) = _by_name(spans, "esper.run")
    episodes = _by_name(spans, "esper.episode")
    seeds = {s.attributes["esper.seed.id"]: s for s in _by_name(spans, "esper.seed")}  # type: ignore[index]
    assert run.parent is None
    assert len({s.context.trace_id for s in spans}) == 1
    assert all(e.parent.span_id == run.context.span_id for e in episodes)  # type: ignore[union-attr]
    ep_by_id = {e.context.span_id: e for e in episodes}
    for seed in seeds.values():
        assert seed.parent.span_id in ep_by_id  # type: ignore[union-attr]
    s1 = seeds["s1"]
    assert s1.start_time == events[1].timestamp_ns
    assert s1.end_time == events[7].timestamp_ns
    assert s1.attributes["esper.seed.outcome"] == "fossilized"
    assert s1.attributes["esper.seed.improvement"] == 2.5
    assert s1.attributes["esper.blueprint.id"] == "norm"
    assert seeds["s2"].attributes["esper.seed.outcome"] == "culled"
    assert seeds["s2"].attributes["esper.seed.cull_reason"] == "gate_failed"
    assert seeds["s3"].attributes["esper.seed.outcome"] == "unfinished"  # its episode ended
    assert seeds["s3"].end_time == events[11].timestamp_ns
    assert seeds["s4"].attributes["esper.seed.outcome"] == "unfinished"  # open at close
    stages = [
        s for s in _by_name(spans, "esper.seed.stage") if s.parent.span_id == s1.context.span_id
    ]  # type: ignore[union-attr]
    assert [s.attributes["esper.stage"] for s in sorted(stages, key=lambda s: s.start_time)] == [  # type: ignore[arg-type, return-value]
        "GERMINATED", "TRAINING", "BLENDING",
    ]  # fmt: skip
    first = min(stages, key=lambda s: s.start_time)  # type: ignore[arg-type, return-value]
    assert [ev.name for ev in first.events] == ["esper.gate"]
    assert first.events[0].attributes["esper.gate"] == "G0"  # type: ignore[index]
    env1 = next(e for e in episodes if e.attributes["esper.env.id"] == 1)  # type: ignore[index]
    assert env1.status.status_code is StatusCode.ERROR
    assert [ev.name for ev in env1.events] == ["esper.governor_rollback"]
    (update,) = _by_name(spans, "esper.ppo.update")
    assert update.end_time == events[9].timestamp_ns
    assert update.end_time - update.start_time == 250_000_000  # type: ignore[operator]
    assert update.parent.span_id == run.context.span_id  # type: ignore[union-attr]
    assert run.resource.attributes["service.name"] == "esper-trainer"
    assert run.resource.attributes["esper.run.id"] == "run-1"
    assert run.resource.attributes["service.instance.id"]


def test_two_hundred_stage_changes_on_one_seed_are_all_present(
    traced: tuple[OTelOutput, InMemorySpanExporter, Clock],
) -> None:
    out, exporter, clock = traced
    out.emit(_seed(clock, ET.SEED_GERMINATED, "long"))
    stages = ["TRAINING", "BLENDING"]
    for i in range(200):
        out.emit(_seed(clock, ET.SEED_STAGE_CHANGED, "long", from_stage=stages[i % 2 - 1],
                       to_stage=stages[i % 2]))  # fmt: skip
    out.emit(_seed(clock, ET.SEED_CULLED, "long", reason="controller"))
    out.close()
    spans = _by_name(exporter.get_finished_spans(), "esper.seed.stage")
    assert len(spans) == 201


def test_service_name_comes_from_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-trainer")
    out = OTelOutput(exporter=InMemorySpanExporter(), batch=False, service_name="ignored")
    assert out.resource.attributes["service.name"] == "my-trainer"
    out.close()


def test_endpoint_gets_the_traces_path() -> None:
    assert traces_endpoint("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_endpoint("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


@pytest.mark.slow
def test_a_real_run_exports_one_seed_span_per_germination_to_a_real_receiver(
    tmp_path: Path,
) -> None:
    receiver = OTLPReceiver()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "esper.scripts.train", "ppo", "--n-envs", "2", "--episodes",
             "2", "--max-epochs", "12", "--seed", "1", "--otlp-endpoint", receiver.endpoint,
             "--telemetry-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        receiver.close()
    events = read_events(tmp_path, strict=True).events
    germinated = {e.seed_id for e in events if e.event_type is ET.SEED_GERMINATED}
    ends = {
        e.seed_id: e.event_type
        for e in events
        if e.event_type in (ET.SEED_FOSSILIZED, ET.SEED_CULLED)
    }
    seeds = {s.attributes["esper.seed.id"]: s for s in receiver.spans if s.name == "esper.seed"}
    assert germinated
    assert set(seeds) == germinated
    assert len([s for s in receiver.spans if s.name == "esper.seed"]) == len(germinated)
    for seed_id, span in seeds.items():
        expected = {ET.SEED_FOSSILIZED: "fossilized", ET.SEED_CULLED: "culled"}.get(
            ends.get(seed_id), "unfinished"
        )  # type: ignore[arg-type]
        assert span.attributes["esper.seed.outcome"] == expected, seed_id
    assert len({s.trace_id for s in receiver.spans}) == 1
    assert {s.resource["service.name"] for s in receiver.spans} == {"esper-trainer"}
    run = next(s for s in receiver.spans if s.name == "esper.run")
    assert run.attributes["esper.run.outcome"] == "completed"
    assert {s.name for s in receiver.spans} >= {
        "esper.episode",
        "esper.seed.stage",
        "esper.ppo.update",
    }
    assert "otel: sent" in proc.stdout


def _dead_run(endpoint: str) -> tuple[float, OTelOutput]:
    hub = NissaHub()
    otel = OTelOutput(endpoint=endpoint, run_id="dead")
    hub.add_backend(otel)
    run_training(RunConfig(mode="ppo", episodes=2, n_envs=2, max_epochs=6, seed=3), hub=hub)
    t0 = time.monotonic()
    hub.close()
    return time.monotonic() - t0, otel


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nothing listening", "never answers"])
def test_a_dead_collector_holds_the_close_to_its_budget_and_every_span_counts_lost(
    kind: str,
) -> None:
    """The run completes (run_training returns); closing waits at most the 5 s export budget."""
    silent = SilentReceiver() if kind == "never answers" else None
    endpoint = silent.endpoint if silent else f"http://127.0.0.1:{free_port()}"
    try:
        shutdown_seconds, otel = _dead_run(endpoint)
    finally:
        if silent:
            silent.close()
    assert shutdown_seconds <= 5.5  # the 5 s budget plus the hub's own drain
    assert otel.spans_ended > 0
    assert otel.exported == 0
    assert otel.lost == otel.spans_ended
