"""Backfill on the path users take: ``esper telemetry backfill RUN --out DIR`` on a record of
over 100,000 events, against ``esper telemetry replay RUN --telemetry-dir OUT`` of the same
record (the peer: the other command that reads a whole record and writes it somewhere).

The record: a real PPO run at --telemetry-level debug (4 envs), whose training events are then
repeated, timestamps moved on by the run's length each time, until the record holds
``EVENTS`` events: real payloads in a real run's proportions, at a length a night's run
reaches. Each command runs as the user runs it (a new process), ``ROUNDS`` times interleaved;
medians are reported.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esper.leyline import TelemetryEventType
from esper.nissa import DirectoryOutput, read_events

from _report import esper, write_section

EVENTS = 100_000
ROUNDS = 3
RUN = ["ppo", "--n-envs", "4", "--episodes", "8", "--max-epochs", "10", "--seed", "2",
       "--telemetry-level", "debug"]  # fmt: skip
ET = TelemetryEventType


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _record(tmp: Path) -> tuple[Path, int]:
    """A record of at least EVENTS events, from one real run (see the module docstring)."""
    esper("train", *RUN, "--telemetry-dir", str(tmp / "seed-run"))
    events = read_events(tmp / "seed-run").events
    first = next(i for i, e in enumerate(events) if e.event_type is ET.TRAINING_STARTED) + 1
    last = max(i for i, e in enumerate(events) if e.event_type is ET.TRAINING_COMPLETED)
    body = events[first:last]
    span = events[last].timestamp_ns - events[first].timestamp_ns + 1_000_000
    out = DirectoryOutput(tmp / "record")
    out.emit(events[first - 1])
    repeats = -(-(EVENTS - 2) // len(body))
    for k in range(repeats):
        for e in body:
            out.emit(replace(e, timestamp_ns=e.timestamp_ns + k * span))
    out.emit(replace(events[last], timestamp_ns=events[last].timestamp_ns + (repeats - 1) * span))
    out.close()
    return out.output_dir, 2 + repeats * len(body)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="esper-bench-backfill-") as name:
        tmp = Path(name)
        record, n = _record(tmp)
        jsonl = _size(record)
        backfill: list[float] = []
        replay: list[float] = []
        blocks = 0
        for r in range(ROUNDS):
            for which in ("backfill", "replay") if r % 2 == 0 else ("replay", "backfill"):
                out = tmp / f"{which}-{r}"
                if which == "backfill":
                    backfill.append(esper("telemetry", "backfill", str(record), "--out", str(out)))
                    blocks = _size(out)
                else:
                    replay.append(esper("telemetry", "replay", str(record), "--telemetry-dir",
                                         str(out)))  # fmt: skip
                shutil.rmtree(out)
    b, p = statistics.median(backfill), statistics.median(replay)
    body = "\n".join([
        "## Backfill into Prometheus blocks",
        "",
        f"`bench/bench_backfill.py`: a record of {n:,} events ({jsonl / 2**20:.1f} MiB of "
        f"JSONL; a real debug-level PPO run, {' '.join(RUN[1:5])}, its training events "
        "repeated), each command run as a new process, "
        f"{ROUNDS} interleaved rounds.",
        "",
        "| command | median wall time (s) | events per second | all rounds (s) |",
        "|---|---|---|---|",
        f"| `esper telemetry backfill RUN --out DIR` | {b:.2f} | {n / b:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in backfill)} |",
        f"| peer: `esper telemetry replay RUN --telemetry-dir OUT` | {p:.2f} | {n / p:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in replay)} |",
        "",
        f"Backfill takes {b / p:.2f}x the replay's time. It writes {blocks / 2**20:.2f} MiB of "
        f"TSDB blocks ({blocks / jsonl * 100:.0f}% of the JSONL), recording rules and ALERTS "
        "included; its time includes promtool, a scratch Prometheus and the rules' evaluation.",
    ])  # fmt: skip
    print(body)
    write_section("backfill", body)


if __name__ == "__main__":
    main()
