"""Training wall time with telemetry off, normal and debug, side by side in one run.

The same short PPO job (same seed, so the same work) runs with each level in turn, rounds
interleaved so drift in the machine's speed hits every level alike; the median per level is
compared. Telemetry goes to a run directory (JSONL file backend) through the real hub.
Budget (SPEC 9): normal costs at most 1% of the wall time of off.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esper.leyline import DEFAULT_BUDGETS, TelemetryConfig, TelemetryLevel
from esper.nissa import DirectoryOutput, NissaHub
from esper.runs import run_training
from esper.runs.config import RunConfig

from _report import write_section

ROUNDS = 9
JOB = {"episodes": 4, "n_envs": 2, "max_epochs": 12, "seed": 7}


def _run(level: TelemetryLevel, base: Path) -> tuple[float, int, float]:
    hub = NissaHub()
    if level is not TelemetryLevel.OFF:
        hub.add_backend(DirectoryOutput(base))
    config = RunConfig(mode="ppo", telemetry=TelemetryConfig(level), **JOB)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    run_training(config, hub=hub)
    elapsed = time.perf_counter() - t0
    hub.close()
    stats = hub.stats()
    return elapsed, stats.emitted, stats.cpu_seconds


def main() -> None:
    levels = [TelemetryLevel.OFF, TelemetryLevel.NORMAL, TelemetryLevel.DEBUG]
    times: dict[TelemetryLevel, list[float]] = {lv: [] for lv in levels}
    events: dict[TelemetryLevel, int] = {}
    cpu: dict[TelemetryLevel, list[float]] = {lv: [] for lv in levels}
    with tempfile.TemporaryDirectory() as tmp:
        _run(TelemetryLevel.OFF, Path(tmp))  # warm-up: imports, data, allocator
        for r in range(ROUNDS):
            order = levels if r % 2 == 0 else list(reversed(levels))
            for level in order:
                elapsed, n, cpu_s = _run(level, Path(tmp) / level.name)
                times[level].append(elapsed)
                events[level] = n
                cpu[level].append(cpu_s)
    off = statistics.median(times[TelemetryLevel.OFF])
    lines = [
        "## Training overhead of telemetry (PPO job)",
        "",
        f"`bench/bench_training_overhead.py`: `run_training` with {JOB}, {ROUNDS} interleaved "
        "rounds per level, median wall time; telemetry to a JSONL run directory.",
        "",
        "| level | events | median wall time (s) | all rounds (s) | ratio to off "
        "| telemetry threads' CPU (s) | CPU share of wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        med = statistics.median(times[level])
        rounds = ", ".join(f"{t:.2f}" for t in times[level])
        cpu_med = statistics.median(cpu[level])
        lines.append(
            f"| {level.name.lower()} | {events[level]:,} | {med:.3f} | {rounds} | "
            f"{med / off:.4f} | {cpu_med:.4f} | {cpu_med / med * 100:.2f}% |"
        )
    normal = statistics.median(times[TelemetryLevel.NORMAL]) / off - 1
    spread = (max(times[TelemetryLevel.OFF]) - min(times[TelemetryLevel.OFF])) / off
    lines += [
        "",
        f"Overhead at normal: {normal * 100:+.2f}% (budget "
        f"{DEFAULT_BUDGETS.training_overhead_ratio * 100:.0f}%); the spread of the off rounds "
        f"alone is {spread * 100:.1f}% of their median, so differences smaller than that are "
        "noise. The CPU time of the hub's threads (pump and file lane, measured with "
        "`time.thread_time`) bounds what telemetry can take from training on this 2-core "
        "machine, independent of that noise.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("training_overhead", body)


if __name__ == "__main__":
    main()
