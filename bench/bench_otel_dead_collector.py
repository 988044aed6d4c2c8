"""Training wall time with OTLP export to a dead collector, against no OTel, in one run.

The same short PPO job runs alternately without the OTel backend and with it pointed at a
loopback port where nothing listens (every export fails after its retries). Budget: within 2%
of the wall time without OTel. Shutdown time of the backend is reported too (budget 5 s).
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esper.leyline import TelemetryConfig
from esper.nissa import NissaHub
from esper.nissa.otel import OTelOutput
from esper.runs import run_training
from esper.runs.config import RunConfig

from _report import write_section

ROUNDS = 7
JOB = {"episodes": 4, "n_envs": 2, "max_epochs": 12, "seed": 7}


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _run(otel: bool) -> tuple[float, float, int]:
    hub = NissaHub()
    backend = OTelOutput(endpoint=_dead_endpoint(), run_id="bench") if otel else None
    if backend is not None:
        hub.add_backend(backend)
    config = RunConfig(mode="ppo", telemetry=TelemetryConfig(), **JOB)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    run_training(config, hub=hub)
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    hub.close()
    return elapsed, time.perf_counter() - t1, 0 if backend is None else backend.lost


def main() -> None:
    _run(False)  # warm-up
    walls: dict[bool, list[float]] = {False: [], True: []}
    closes: list[float] = []
    lost = 0
    for r in range(ROUNDS):
        for otel in (False, True) if r % 2 == 0 else (True, False):
            wall, close, n = _run(otel)
            walls[otel].append(wall)
            if otel:
                closes.append(close)
                lost = n
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    spread = (max(walls[False]) - min(walls[False])) / off
    body = "\n".join([
        "## OpenTelemetry export to a dead collector",
        "",
        f"`bench/bench_otel_dead_collector.py`: `run_training` with {JOB}, telemetry level normal, "
        f"{ROUNDS} interleaved rounds; OTLP/HTTP to a loopback port where nothing listens.",
        "",
        "| configuration | median wall time (s) | all rounds (s) |",
        "|---|---|---|",
        f"| no OTel backend | {off:.3f} | {', '.join(f'{t:.2f}' for t in walls[False])} |",
        f"| OTel, dead collector | {on:.3f} | {', '.join(f'{t:.2f}' for t in walls[True])} |",
        "",
        f"Ratio {on / off:.4f} ({(on / off - 1) * 100:+.2f}%, budget 2%); the spread of the "
        f"no-OTel rounds is {spread * 100:.1f}% of their median. Closing the hub took at most "
        f"{max(closes):.2f} s (budget 5 s); {lost} spans of the last run were counted lost.",
    ])  # fmt: skip
    print(body)
    write_section("otel_dead_collector", body)


if __name__ == "__main__":
    main()
