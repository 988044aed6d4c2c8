"""emit() cost on the calling thread, against TensorBoard's add_scalar and prometheus_client.

Budgets (SPEC 9): emit median <= 1 us and p99 <= 10 us, also with a backend that sleeps 1 ms
per event; creating an event and emitting it, median <= 2 us.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prometheus_client import CollectorRegistry, Histogram

from esper.leyline import DEFAULT_BUDGETS, TelemetryEvent, TelemetryEventType
from esper.nissa import InMemoryOutput, NissaHub, OutputBackend

from _report import per_call_ns, quantile, write_section

N = 300_000
ET = TelemetryEventType.EPOCH_COMPLETED


class SleepyOutput(OutputBackend):
    """A backend that takes 1 ms per event."""

    def emit(self, event: TelemetryEvent) -> None:
        time.sleep(0.001)


def _emit_only(hub: NissaHub) -> list[int]:
    events = [TelemetryEvent(event_type=ET, epoch=i, data={"val_accuracy": 1.0}) for i in range(N)]
    it = iter(events)
    emit = hub.emit
    return per_call_ns(lambda: emit(next(it)), N)


def _create_and_emit(hub: NissaHub) -> list[int]:
    emit = hub.emit
    return per_call_ns(
        lambda: emit(TelemetryEvent(event_type=ET, epoch=1, data={"val_accuracy": 1.0})), N
    )


def main() -> None:
    rows: list[tuple[str, list[int]]] = []

    hub = NissaHub()
    hub.add_backend(InMemoryOutput(maxlen=1000))
    rows.append(("esper `emit()`, in-memory backend", _emit_only(hub)))
    rows.append(("esper create + `emit()`, in-memory backend", _create_and_emit(hub)))
    hub.close()

    hub = NissaHub()
    hub.add_backend(SleepyOutput())
    rows.append(("esper `emit()`, backend sleeping 1 ms/event", _emit_only(hub)))
    rows.append(("esper create + `emit()`, backend sleeping 1 ms/event", _create_and_emit(hub)))
    dropped = hub.stats().total_dropped
    hub.close(timeout=0.5)  # the sleepy lane holds ~65k events; no need to wait for them

    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        step = iter(range(N))
        rows.append(
            ("peer: TensorBoard `SummaryWriter.add_scalar`",
             per_call_ns(lambda: writer.add_scalar("loss", 0.5, next(step)), N))
        )  # fmt: skip
        writer.close()

    hist = Histogram("bench_seconds", "bench", registry=CollectorRegistry())
    observe = per_call_ns(lambda: hist.observe(0.01), N)
    rows.append(("peer: prometheus_client `Histogram.observe`", observe))

    lines = [
        "## emit() on the calling thread",
        "",
        f"`bench/bench_emit.py`: {N:,} calls per row, each timed alone with "
        "`time.perf_counter_ns()` (timer cost subtracted).",
        "",
        "| what | median (us) | p99 (us) | median ratio to add_scalar |",
        "|---|---|---|---|",
    ]
    tb_median = quantile(rows[4][1], 0.5)
    for name, samples in rows:
        med, p99 = quantile(samples, 0.5), quantile(samples, 0.99)
        lines.append(f"| {name} | {med / 1000:.3f} | {p99 / 1000:.3f} | {med / tb_median:.3f} |")
    b = DEFAULT_BUDGETS
    lines += [
        "",
        f"Budgets: emit median <= {b.emit_median_seconds * 1e6:g} us, p99 <= "
        f"{b.emit_p99_seconds * 1e6:g} us; create + emit median <= "
        f"{b.create_and_emit_median_seconds * 1e6:g} us. With the sleeping backend the hub "
        f"dropped {dropped:,} high-rate events (counted and reported) instead of blocking.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("emit", body)


if __name__ == "__main__":
    main()
