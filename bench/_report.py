"""Shared helpers for benchmarks: per-call timing and docs/PERFORMANCE.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

PERFORMANCE_MD = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"

HEADER = """# Performance

Figures written by the benchmarks in `bench/` (`./dev bench`). Each section names the machine it
ran on and compares against a peer measured in the same run. Re-run to refresh; do not edit the
sections by hand.
"""


def machine() -> str:
    """One line naming the machine, for the record."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def per_call_ns(fn: Callable[[], object], n: int) -> list[int]:
    """Time ``fn`` call by call; subtract the timer's own median cost."""
    clock = time.perf_counter_ns
    empty = []
    for _ in range(min(n, 100_000)):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = statistics.median(empty)
    samples = []
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0 - overhead)
    return samples


def quantile(samples: list[int] | list[float], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section ``name`` of docs/PERFORMANCE.md."""
    text = PERFORMANCE_MD.read_text() if PERFORMANCE_MD.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n\n_Run {stamp} on {machine()}._\n{end}"
    pattern = re.compile(rf"{re.escape(start)}.*?{re.escape(end)}", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    PERFORMANCE_MD.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE_MD.write_text(text)


def esper(*args: str) -> float:
    """Wall seconds of one ``esper`` command, run as a user runs it (a new process); exits
    naming the command and its output when it fails."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "esper.scripts.cli", *args],
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"esper {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")  # fmt: skip
    return wall
