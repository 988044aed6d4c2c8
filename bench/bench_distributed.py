"""Wall time per PPO batch: the same 4 envs in 1 process or over 2 ranks under torchrun, each
with torch's default thread count and with the count the run chooses, side by side in one run.

Every configuration runs ``esper train ppo`` for real (the 2-rank ones under
``python -m torch.distributed.run --standalone``) with the same seed and job. The time per batch
is read from the run's own events: between consecutive BATCH_EPOCH_COMPLETED events, so the
first batch (imports, data, allocator warm-up) is not counted. Rounds
are interleaved so a change in the machine's load hits every configuration alike; the median
per configuration is compared with the peer, one process with torch's default threads.

"Default" threads is what a process gets without a choice: one per core (``--threads`` set to
the core count, as torch does by default; torchrun would set OMP_NUM_THREADS=1 instead).
"Chosen" is the run's own choice: cores over the processes of the node.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from esper.leyline import TelemetryEventType
from esper.nissa import read_events
from esper.runs.placement import cores_available

from _report import write_section

ROUNDS = 2
JOB = ["ppo", "--n-envs", "4", "--episodes", "12", "--max-epochs", "6", "--seed", "5"]
"""3 batches of 4 envs: the first is warm-up, the other 2 are measured. Kept short because
two processes that each take every core run many times slower on a small machine."""


def _command(ranks: int, threads: int | None, out: Path) -> list[str]:
    launcher = (
        [sys.executable, "-m", "esper.scripts.train"]
        if ranks == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", str(ranks), "-m", "esper.scripts.train"]
    )  # fmt: skip
    extra = [] if threads is None else ["--threads", str(threads)]
    return [*launcher, *JOB, *extra, "--telemetry-dir", str(out)]


def _per_batch(out: Path) -> list[float]:
    """Seconds per batch after the first, from the run's own events (rank 0's)."""
    events = read_events(next(out.iterdir())).events
    ends = [
        e.timestamp_ns for e in events if e.event_type is TelemetryEventType.BATCH_EPOCH_COMPLETED
    ]
    return [(b - a) / 1e9 for a, b in itertools.pairwise(ends)]


def main() -> None:
    cores = cores_available()
    configs = {
        "1 process, default threads (peer)": (1, cores),
        "1 process, chosen threads": (1, None),
        "2 ranks, default threads": (2, cores),
        "2 ranks, chosen threads": (2, None),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    env = {**os.environ, "ESPER_STRICT_PAYLOADS": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            for name, (ranks, threads) in configs.items():
                out = Path(tmp) / f"{r}-{ranks}-{threads}"
                proc = subprocess.run(
                    _command(ranks, threads, out), capture_output=True, text=True, env=env,
                    check=False, timeout=1800,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
                times[name] += _per_batch(out)
                med = statistics.median(times[name])
                print(f"round {r + 1}/{ROUNDS} {name}: {med:.2f} s/batch", flush=True)
    peer = statistics.median(times["1 process, default threads (peer)"])
    rows = [
        "| configuration | threads per process | median s per batch | min | vs peer |",
        "|---|---|---|---|---|",
    ]
    for name, (ranks, threads) in configs.items():
        med = statistics.median(times[name])
        chosen = threads if threads is not None else max(1, cores // ranks)
        rows.append(
            f"| {name} | {chosen} | {med:.2f} | {min(times[name]):.2f} | {peer / med:.2f}x |"
        )
    body = "\n".join(
        [
            "## Scaling out: 1 process against 2 ranks (PPO, 4 envs)",
            "",
            f"`bench/bench_distributed.py`: `esper train {' '.join(JOB)}` in one process and "
            "under `torchrun --standalone --nproc-per-node 2` (gloo on loopback), with torch's "
            f"default threads (one per core: {cores}) and with the run's choice (cores over the "
            f"node's processes). {ROUNDS} interleaved rounds; per batch after the first, from "
            'the runs\' own events. "vs peer" is the speed-up over one process with default '
            "threads (above 1: faster).",
            "",
            *rows,
            "",
            "One process chooses as many threads as torch's default (one per core), so the "
            "two one-process rows run the same configuration: their difference is the "
            "run-to-run noise of this machine.",
        ]
    )
    write_section("distributed", body)
    print(body)


if __name__ == "__main__":
    main()
