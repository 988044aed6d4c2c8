"""The GPU proof in one command (``./dev gpu-check``), for a machine with a CUDA device.

1. A short PPO run on ``cuda`` with ``/metrics`` served: the CUDA memory gauges are read back
   from the endpoint, as Prometheus would read them.
2. The same run with ``torch.cuda.set_sync_debug_mode("error")`` around every training step and
   validation pass (``MorphogeneticEnv._train`` and ``_validate_sums``): any host-device
   synchronisation there raises. The epoch's one documented read-back (``packed.tolist()`` in
   ``run_epoch``) is outside them.
3. Telemetry overhead on the GPU: the same job at off, normal and debug, rounds interleaved,
   medians compared.

Prints one summary line (and exits 1 when a check failed). On a machine without CUDA it says it
was skipped and exits 0. Budget: under 8 minutes.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from esper.leyline import TelemetryConfig, TelemetryLevel
from esper.nissa import DirectoryOutput, NissaHub
from esper.nissa.prometheus import PrometheusOutput
from esper.runs import run_training
from esper.runs.config import RunConfig
from esper.tolaria.environment import MorphogeneticEnv

JOB: dict[str, Any] = {"episodes": 4, "n_envs": 4, "max_epochs": 8, "seed": 11}
ROUNDS = 3
LEVELS = (TelemetryLevel.OFF, TelemetryLevel.NORMAL, TelemetryLevel.DEBUG)


def _config(level: TelemetryLevel) -> RunConfig:
    return RunConfig(mode="ppo", device="cuda", telemetry=TelemetryConfig(level), **JOB)


def _cuda_gauges() -> str:
    """A run on cuda with /metrics served; the CUDA gauges as the endpoint serves them."""
    hub = NissaHub()
    prom = PrometheusOutput(hub_stats=hub.stats, cuda=True)
    port = prom.serve(0)
    hub.add_backend(prom)
    run_training(_config(TelemetryLevel.NORMAL), hub=hub)
    hub.flush(timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    hub.close()
    found = re.findall(r"^esper_cuda_memory_allocated_bytes\{.*?\} (\S+)$", text, re.M)
    peak = re.findall(r"^esper_cuda_memory_peak_allocated_bytes\{.*?\} (\S+)$", text, re.M)
    if not found or not any(float(v) > 0 for v in peak):
        raise AssertionError(f"no CUDA memory gauges with data on /metrics: {found} {peak}")
    return f"cuda gauges ok (peak {max(float(v) for v in peak) / 2**20:.0f} MiB)"


@contextmanager
def _no_sync_in_steps() -> Iterator[None]:
    """Every training step and validation pass under sync debug mode 'error'."""
    originals: dict[str, Callable[..., Any]] = {
        name: getattr(MorphogeneticEnv, name) for name in ("_train", "_validate_sums")
    }

    def guarded(original: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            torch.cuda.set_sync_debug_mode("error")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return run

    for name, original in originals.items():
        setattr(MorphogeneticEnv, name, guarded(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(MorphogeneticEnv, name, original)


def _no_sync() -> str:
    with _no_sync_in_steps():
        run_training(_config(TelemetryLevel.DEBUG), hub=NissaHub())
    return "no sync in steps"


def _overhead() -> str:
    walls: dict[TelemetryLevel, list[float]] = {level: [] for level in LEVELS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS + 1):
            for level in LEVELS if r % 2 == 0 else reversed(LEVELS):
                hub = NissaHub()
                if level is not TelemetryLevel.OFF:
                    hub.add_backend(DirectoryOutput(Path(tmp)))
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                run_training(_config(level), hub=hub)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                hub.close()
                if r > 0:  # round 0 warms the device up
                    walls[level].append(wall)
    off = statistics.median(walls[TelemetryLevel.OFF])
    parts = [f"off {off:.2f}s"]
    for level in LEVELS[1:]:
        m = statistics.median(walls[level])
        parts.append(f"{level.name.lower()} {(m / off - 1) * 100:+.1f}%")
    return "overhead " + ", ".join(parts)


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: skipped (no CUDA device here)")
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    name = torch.cuda.get_device_name(0)
    results, failed = [], False
    for check in (_cuda_gauges, _no_sync, _overhead):
        try:
            results.append(check())
        except Exception as exc:  # noqa: BLE001 - one line per check, the rest still run
            failed = True
            traceback.print_exc(file=sys.stderr)
            results.append(f"{check.__name__.strip('_')} FAILED: {type(exc).__name__}: {exc}")
    took = time.perf_counter() - start
    verdict = "FAILED" if failed else "ok"
    print(f"gpu-check {verdict} on {name}, torch {torch.__version__}, {took:.0f}s: "
          + "; ".join(results))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
