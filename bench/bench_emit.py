"""The hot path as training calls it: ``emit_event(hub.emit, type, payload)`` (``make_event``
and a guarded ``hub.emit``), per event type.

Payloads are the real ones: captured from a short real PPO run at --telemetry-level debug, one
of each high-rate event type (and variant). Each is then built with ``make_event`` (catalogue
mode as in production: checked on the hub's pump thread) and emitted into a hub that writes a
run directory and feeds Prometheus, as ``esper train`` does. Peers timed in the same run:
TensorBoard ``SummaryWriter.add_scalar``, prometheus_client ``Histogram.observe`` and an
OpenTelemetry span start + end (SDK tracer, batch processor).

Budgets (SPEC 9): create + emit median <= 2 us and p99 <= 10 us for a 30-field payload;
emit alone median <= 1 us, p99 <= 10 us, also while a backend takes 1 ms per event.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from prometheus_client import CollectorRegistry, Histogram

from esper.leyline import (
    DEFAULT_BUDGETS,
    DISCRIMINATORS,
    LIFECYCLE_EVENT_TYPES,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    emit_event,
    make_event,
    payload_problem,
    set_strict_payloads,
    strict_payloads,
)
from esper.nissa import DirectoryOutput, InMemoryOutput, NissaHub, OutputBackend
from esper.nissa.prometheus import PrometheusOutput
from esper.runs import run_training
from esper.runs.config import RunConfig

from _report import per_call_ns, quantile, write_section

N = 30_000
"""Calls timed per row."""


BURST = 256
"""Events emitted back to back between quiet points, as training emits an epoch's events."""


class SleepyOutput(OutputBackend):
    """A backend that takes 1 ms per event (a slow disk or network) until woken."""

    awake = False

    def emit(self, event: TelemetryEvent) -> None:
        if not self.awake:
            time.sleep(0.001)


def real_payloads() -> dict[str, tuple[TelemetryEventType, dict[str, Any]]]:
    """One real payload of every high-rate event type (and variant) of a short PPO run."""
    torch.set_num_threads(1)
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    config = RunConfig(mode="ppo", n_envs=2, episodes=2, max_epochs=6, seed=3,
                       telemetry=TelemetryConfig(TelemetryLevel.DEBUG))  # fmt: skip
    run_training(config, hub=hub)
    hub.close()
    found: dict[str, tuple[TelemetryEventType, dict[str, Any]]] = {}
    for e in out.events:
        if e.event_type in LIFECYCLE_EVENT_TYPES:
            continue
        disc = DISCRIMINATORS.get(e.event_type)
        name = e.event_type.name + (f" ({disc}={e.data[disc]})" if disc else "")
        found.setdefault(name, (e.event_type, e.data))
    return found


def _create_and_emit(
    hub: NissaHub, event_type: TelemetryEventType, data: dict[str, Any]
) -> list[int]:
    """Per-call times of what training does, in bursts of BURST calls with the hub's threads
    left to catch up (untimed) in between: training emits an epoch's events, then computes."""
    emit = hub.emit
    samples: list[int] = []
    while len(samples) < N:
        samples += per_call_ns(
            lambda: emit_event(emit, event_type, data, message="m", epoch=3), BURST
        )
        hub.flush(60)
    return samples


def _emit_paced(hub: NissaHub, events: list[TelemetryEvent]) -> list[int]:
    """``emit`` alone in bursts; between bursts (untimed) the pump routes what is queued,
    while the slow backend goes on working through its own queue."""
    it = iter(events)
    emit = hub.emit
    samples: list[int] = []
    while len(samples) < len(events):
        samples += per_call_ns(lambda: emit(next(it)), min(BURST, len(events) - len(samples)))
        deadline = time.monotonic() + 60
        while hub.ingress_depth and time.monotonic() < deadline:
            time.sleep(0.001)  # the training step's compute, during which the pump runs
    return samples


def _peers() -> list[tuple[str, list[int]]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from torch.utils.tensorboard import SummaryWriter

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        step = iter(range(N))
        scalar = per_call_ns(lambda: writer.add_scalar("loss", 0.5, next(step)), N)
        rows.append(("TensorBoard `SummaryWriter.add_scalar`", scalar))
        writer.close()
    hist = Histogram("bench_seconds", "bench", registry=CollectorRegistry())
    rows.append(
        ("prometheus_client `Histogram.observe`", per_call_ns(lambda: hist.observe(0.01), N))
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=N + 1))
    tracer = provider.get_tracer("bench")
    rows.append(("OpenTelemetry span start + end",
                 per_call_ns(lambda: tracer.start_span("s").end(), N)))  # fmt: skip
    provider.shutdown()
    return rows


def _us(samples: list[int], q: float) -> str:
    return f"{quantile(samples, q) / 1000:.2f}"


def main() -> None:
    peers = _peers()  # first, while no hub thread runs
    payloads = real_payloads()
    set_strict_payloads(False)  # production: the pump checks, not the training thread
    assert not strict_payloads()

    lines = [
        "## The hot path as training calls it",
        "",
        f"`bench/bench_emit.py`: `emit_event(hub.emit, type, payload)` (`make_event`, then "
        "the guarded `hub.emit` every model and training event goes through) with the real "
        "payload of "
        f"each high-rate event type, captured from a short PPO run at debug level; {N:,} calls "
        f"per row in bursts of {BURST} (as an epoch emits them; the hub's threads catch up, "
        "untimed, between bursts), each call timed alone (timer cost subtracted). The hub "
        "writes a run directory and feeds a Prometheus backend, as `esper train` does. The "
        "payload is checked against the "
        "catalogue once per event, on the hub's pump thread: the last column is that check's "
        "cost there (compiled per catalogue entry), off the training thread.",
        "",
        "| event type | fields | create + emit median (us) | p99 (us) | check on the pump, "
        "median (us) | create + emit with the check inline (strict mode), median (us) |",
        "|---|---|---|---|---|---|",
    ]
    worst_30 = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        hub = NissaHub()
        hub.add_backend(DirectoryOutput(tmp))
        hub.add_backend(PrometheusOutput(cuda=False))
        for name, (event_type, data) in sorted(payloads.items()):
            set_strict_payloads(True)
            inline = _create_and_emit(hub, event_type, data)
            set_strict_payloads(False)
            samples = _create_and_emit(hub, event_type, data)
            check = per_call_ns(lambda t=event_type, d=data: payload_problem(t, d), N // 5)
            assert payload_problem(event_type, data) is None, name
            lines.append(f"| {name} | {len(data)} | {_us(samples, 0.5)} | {_us(samples, 0.99)} | "
                         f"{_us(check, 0.5)} | {_us(inline, 0.5)} |")  # fmt: skip
            if len(data) >= 30:
                worst_30 = max(worst_30, quantile(samples, 0.5))
            hub.flush(60)
        stats = hub.stats()
        hub.close(60)

    slow_hub = NissaHub()
    sleepy = SleepyOutput()
    slow_hub.add_backend(sleepy)
    env_type, env_data = payloads["EPOCH_COMPLETED (scope=env)"]
    events = [make_event(env_type, env_data, epoch=i) for i in range(N)]
    emit_only = _emit_paced(slow_hub, events)
    dropped = slow_hub.stats().total_dropped
    sleepy.awake = True  # let the lane run through its queue
    slow_hub.close(timeout=60)

    b = DEFAULT_BUDGETS
    lines += [
        "",
        "Peers and the emit call alone, same run:",
        "",
        "| what | median (us) | p99 (us) |",
        "|---|---|---|",
        "| esper `emit()` alone (EPOCH_COMPLETED, env), backend sleeping 1 ms/event | "
        f"{_us(emit_only, 0.5)} | "
        f"{_us(emit_only, 0.99)} |",
    ]
    lines += [f"| peer: {name} | {_us(s, 0.5)} | {_us(s, 0.99)} |" for name, s in peers]
    tb = quantile(peers[0][1], 0.5)
    lines += [
        "",
        f"Budgets: create + emit median <= {b.create_and_emit_median_seconds * 1e6:g} us "
        f"(slowest payload of 30+ fields here: {worst_30 / 1000:.2f} us, "
        f"{worst_30 / tb:.2f}x TensorBoard's add_scalar); emit median <= "
        f"{b.emit_median_seconds * 1e6:g} us and p99 <= {b.emit_p99_seconds * 1e6:g} us. "
        f"The timed hub delivered {stats.backends[0].delivered:,} events to the run directory, "
        f"dropped {stats.total_dropped:,} (counted), and found {stats.invalid} payloads off "
        f"the catalogue. The hub with the sleeping backend never blocked the caller; its "
        f"backend queue dropped {dropped:,} high-rate events (counted).",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("emit", body)


if __name__ == "__main__":
    main()
