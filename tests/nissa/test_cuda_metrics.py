"""The trainer's per-process CUDA gauges, read from the caching allocator at scrape time.

This machine has no GPU: the allocator's numbers come from a stand-in source shaped as
``torch.cuda.memory_stats`` returns them, and go through the real exporter and a real scrape.
"""

from __future__ import annotations

import subprocess
import urllib.request
from typing import Any

import pytest

from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.cuda import CudaStatsSource, cuda_identity

UUID0 = "5fd3a1c2-7e0b-4c51-9a3e-2b8f0c6d1e47"


class FakeAllocator(CudaStatsSource):
    def __init__(self, stats: list[dict[str, Any]], *, ready: bool = True) -> None:
        super().__init__()
        self.stats = stats
        self.initialised = ready
        self.reads = 0

    def ready(self) -> bool:
        return self.initialised

    def device_count(self) -> int:
        return len(self.stats)

    def memory_stats(self, index: int) -> dict[str, Any]:
        self.reads += 1
        return self.stats[index]

    def identity(self, index: int) -> tuple[str, str, str]:
        return cuda_identity(
            index, [UUID0, "GPU-9a0b7c6d-0000-4000-8000-000000000001"][index], "2,3"
        )


def _stats(allocated: int, reserved: int, peak: int, ooms: int) -> dict[str, Any]:
    return {
        "allocated_bytes.all.current": allocated,
        "reserved_bytes.all.current": reserved,
        "allocated_bytes.all.peak": peak,
        "num_ooms": ooms,
        "active.all.current": 7,  # the allocator reports many more keys
    }


def _scrape(out: PrometheusOutput) -> str:
    out.serve(port=0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{out.port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    finally:
        out.close()


def test_gauges_carry_the_allocator_numbers_with_dcgm_join_labels() -> None:
    source = FakeAllocator([_stats(1 << 30, 3 << 30, 2 << 30, 0), _stats(5, 10, 7, 2)])
    text = _scrape(PrometheusOutput(cuda=source))
    first = 'UUID="GPU-5fd3a1c2-7e0b-4c51-9a3e-2b8f0c6d1e47",device="cuda:0",gpu="2"'
    second = 'UUID="GPU-9a0b7c6d-0000-4000-8000-000000000001",device="cuda:1",gpu="3"'
    assert f"esper_cuda_memory_allocated_bytes{{{first}}} 1.073741824e+09" in text
    assert f"esper_cuda_memory_reserved_bytes{{{first}}} 3.221225472e+09" in text
    assert f"esper_cuda_memory_peak_allocated_bytes{{{first}}} 2.147483648e+09" in text
    assert f"esper_cuda_oom_total{{{first}}} 0.0" in text
    assert f"esper_cuda_oom_total{{{second}}} 2.0" in text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_nothing_is_read_before_the_process_initialised_cuda() -> None:
    """A scrape must not create a CUDA context in a process that trains on the CPU."""
    source = FakeAllocator([_stats(1, 1, 1, 0)], ready=False)
    text = _scrape(PrometheusOutput(cuda=source))
    assert source.reads == 0
    assert "# TYPE esper_cuda_memory_reserved_bytes gauge" in text
    assert "esper_cuda_memory_reserved_bytes{" not in text


def test_a_cpu_process_serves_no_cuda_families() -> None:
    text = _scrape(PrometheusOutput(cuda=False))
    assert "esper_cuda_" not in text


@pytest.mark.parametrize(
    ("index", "uuid", "visible", "expected"),
    [
        (0, UUID0, None, ("cuda:0", "0", f"GPU-{UUID0}")),
        (1, f"GPU-{UUID0}", "4,6", ("cuda:1", "6", f"GPU-{UUID0}")),
        # Devices chosen by UUID: the NVML index is unknown, the UUID still joins.
        (0, UUID0, f"GPU-{UUID0}", ("cuda:0", "", f"GPU-{UUID0}")),
        (0, "MIG-1234", "MIG-1234", ("cuda:0", "", "MIG-1234")),
    ],
)
def test_identity_is_spelt_as_dcgm_exporter_spells_the_gpu(
    index: int, uuid: str, visible: str | None, expected: tuple[str, str, str]
) -> None:
    assert cuda_identity(index, uuid, visible) == expected
