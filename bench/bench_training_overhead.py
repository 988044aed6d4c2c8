"""Training wall time with telemetry off, normal and debug, side by side in one run.

The same short PPO job (same seed, so the same work) runs with each setting in turn, rounds
interleaved so drift in the machine's speed hits every setting alike; the median per setting is
compared. Telemetry goes to a run directory (JSONL file backend) through the real hub.
Budget (SPEC 9): normal costs at most 1% of the wall time of off. Escalation: normal with
``--escalate-epochs`` at its default against 0 (what escalation costs a run), and the cost of
an escalated epoch, which records what debug records, from debug against normal per epoch.
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
from esper.simic.escalation import DEFAULT_ESCALATE_EPOCHS

from _report import write_section

ROUNDS = 15
JOB = {"episodes": 4, "n_envs": 2, "max_epochs": 12, "seed": 7}


SETTINGS: dict[str, tuple[TelemetryLevel, int]] = {
    "off": (TelemetryLevel.OFF, 0),
    "normal, no escalation": (TelemetryLevel.NORMAL, 0),
    f"normal, --escalate-epochs {DEFAULT_ESCALATE_EPOCHS} (default)": (
        TelemetryLevel.NORMAL,
        DEFAULT_ESCALATE_EPOCHS,
    ),
    "debug": (TelemetryLevel.DEBUG, 0),
}
"""Name -> (level, escalate_epochs)."""


def _run(setting: str, base: Path) -> tuple[float, int, float]:
    level, escalate = SETTINGS[setting]
    hub = NissaHub()
    if level is not TelemetryLevel.OFF:
        hub.add_backend(DirectoryOutput(base))
    config = RunConfig(mode="ppo", telemetry=TelemetryConfig(level), escalate_epochs=escalate,
                       **JOB)  # type: ignore[arg-type]  # fmt: skip
    t0 = time.perf_counter()
    run_training(config, hub=hub)
    elapsed = time.perf_counter() - t0
    hub.close()
    stats = hub.stats()
    return elapsed, stats.emitted, stats.cpu_seconds


def main() -> None:
    names = list(SETTINGS)
    times: dict[str, list[float]] = {n: [] for n in names}
    events: dict[str, int] = {}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        _run("off", Path(tmp))  # warm-up: imports, data, allocator
        for r in range(ROUNDS):
            order = names if r % 2 == 0 else list(reversed(names))
            for i, name in enumerate(order):
                elapsed, n, cpu_s = _run(name, Path(tmp) / f"{r}-{i}")
                times[name].append(elapsed)
                events[name] = n
                cpu[name].append(cpu_s)
    off = statistics.median(times["off"])
    lines = [
        "## Training overhead of telemetry (PPO job)",
        "",
        f"`bench/bench_training_overhead.py`: `run_training` with {JOB}, {ROUNDS} interleaved "
        "rounds per setting, median wall time; telemetry to a JSONL run directory.",
        "",
        "| setting | events | median wall time (s) | all rounds (s) | ratio to off "
        "| telemetry threads' CPU (s) | CPU share of wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        med = statistics.median(times[name])
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        cpu_med = statistics.median(cpu[name])
        lines.append(
            f"| {name} | {events[name]:,} | {med:.3f} | {rounds} | "
            f"{med / off:.4f} | {cpu_med:.4f} | {cpu_med / med * 100:.2f}% |"
        )
    normal_med = statistics.median(times["normal, no escalation"])
    escalating = names[2]
    debug_med = statistics.median(times["debug"])
    epochs = JOB["episodes"] // JOB["n_envs"] * JOB["max_epochs"]
    per_epoch = (debug_med - normal_med) / epochs
    escalation_cost = statistics.median(times[escalating]) / normal_med - 1
    more_events = (events["debug"] - events["normal, no escalation"]) / epochs
    lines += [
        "",
        f"Escalation at its default costs {escalation_cost:+.2%} "
        f"of a normal run with none ({events[escalating] - events['normal, no escalation']:+,} "
        "events: the windows this job's own anomalies opened, and their debug detail). An "
        f"escalated epoch records what debug records: debug against normal costs "
        f"{per_epoch * 1000:+.1f} ms per epoch of {JOB['n_envs']} envs "
        f"({(debug_med / normal_med - 1):+.2%}), "
        f"{more_events:.1f} more events per epoch.",
    ]
    normal = normal_med / off - 1
    spread = (max(times["off"]) - min(times["off"])) / off
    lines += [
        "",
        f"Overhead at normal (no escalation): {normal * 100:+.2f}% (budget "
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
