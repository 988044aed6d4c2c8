"""The hub's own ceiling: the sustained event rate it delivers to a run directory (JSONL) and
Prometheus together with nothing dropped, against the event rate a debug-level 64-env PPO run
produces on the same machine.

Ceiling: the events of a real debug-level run (4 envs), emitted as fast as the hub takes them
without dropping: the producer waits for delivery every ``hub.safe_burst`` events, as
``esper telemetry replay`` does, so the figure is what the slowest backend sustains. Checked
with the hub's own counts: nothing dropped, every event kept. The run: ``esper train ppo
--n-envs 64 --telemetry-level debug`` for a short job, its events counted over its wall time.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esper.nissa import DirectoryOutput, NissaHub, read_events
from esper.nissa.backends import BackendSpec
from esper.nissa.prometheus import PrometheusOutput
from esper.runs.session import RunSession

from _report import write_section

EVENTS = 200_000
ROUNDS = 3
RUN = ["ppo", "--n-envs", "64", "--episodes", "64", "--max-epochs", "3", "--seed", "5",
       "--telemetry-level", "debug"]  # fmt: skip


def _esper(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "esper.scripts.cli", *args], check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def _ceiling(events: list[object], tmp: Path) -> tuple[float, int]:
    hub = NissaHub()
    prom = PrometheusOutput(hub_stats=hub.stats, cuda=False)
    hub.add_backend(DirectoryOutput(tmp))
    hub.add_backend(prom)
    session = RunSession(BackendSpec(), hub=hub, announce=False)
    n = 0
    t0 = time.perf_counter()
    while n < EVENTS:
        for e in events:
            session.emit_recorded(e)  # type: ignore[arg-type]
            n += 1
    hub.flush()
    elapsed = time.perf_counter() - t0
    session.close()
    stats = hub.stats()
    lost = stats.total_dropped + sum(b.not_kept for b in stats.backends)
    return n / elapsed, lost


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="esper-bench-hub-") as name:
        tmp = Path(name)
        small_run = ["ppo", "--n-envs", "4", "--episodes", "8", "--max-epochs", "10",
                     "--seed", "2", "--telemetry-level", "debug"]  # fmt: skip
        _esper("train", *small_run, "--telemetry-dir", str(tmp / "small"))
        small = read_events(tmp / "small").events
        events = [replace(e, run_id=None) for e in small]
        rates, lost = [], 0
        for r in range(ROUNDS):
            rate, not_kept = _ceiling(events, tmp / f"ceiling-{r}")
            rates.append(rate)
            lost += not_kept
        wall = _esper("train", *RUN, "--telemetry-dir", str(tmp / "big"))
        big = read_events(tmp / "big").events
    span = (big[-1].timestamp_ns - big[0].timestamp_ns) / 1e9
    run_rate = len(big) / span
    ceiling = statistics.median(rates)
    body = "\n".join([
        "## The hub's ceiling against a debug-level 64-env run",
        "",
        f"`bench/bench_hub_ceiling.py`: {EVENTS:,} events of a real debug-level run through one "
        f"hub into a run directory and Prometheus, {ROUNDS} rounds, the producer pacing itself "
        "so nothing drops; and `esper train " + " ".join(RUN) + "` on the same machine.",
        "",
        "| what | events per second |",
        "|---|---|",
        f"| the hub's ceiling (JSONL + Prometheus, nothing dropped; median) | {ceiling:,.0f} |",
        f"| rounds | {', '.join(f'{r:,.0f}' for r in rates)} |",
        f"| the 64-env debug run ({len(big):,} events over its {span:.1f} s from first to last "
        f"event; {wall:.1f} s with start-up) | {run_rate:,.0f} |",
        "",
        f"Ratio: the hub sustains {ceiling / run_rate:.0f}x what the run produces. Events not "
        f"kept over all ceiling rounds: {lost}.",
    ])  # fmt: skip
    print(body)
    write_section("hub_ceiling", body)


if __name__ == "__main__":
    main()
