"""The trainer's own CUDA gauges: torch's caching allocator, read at scrape time.

``CudaCollector`` is registered on the exporter's registry when CUDA is available; the labels
(``device``, ``gpu``, ``UUID``) spell a GPU as NVIDIA's dcgm-exporter does, so the two join.
These values exist only while the process runs: backfill never invents them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from esper.nissa.prometheus.catalogue import METRICS_BY_NAME, MetricKind


class CudaStatsSource:
    """Where the CUDA gauges come from: torch's caching allocator, per visible device.

    Nothing here synchronises with a device: ``memory_stats`` reads host-side counts. Nothing
    is read until the process itself has initialised CUDA, so a scrape never creates a CUDA
    context (hundreds of MB on every GPU) in a process that trains on the CPU.
    """

    def __init__(self) -> None:
        self._identity: dict[int, tuple[str, str, str]] = {}

    def ready(self) -> bool:
        import torch  # noqa: PLC0415 - only when CUDA is present

        return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]

    def device_count(self) -> int:
        import torch  # noqa: PLC0415

        return int(torch.cuda.device_count())

    def memory_stats(self, index: int) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        return dict(torch.cuda.memory_stats(index))

    def identity(self, index: int) -> tuple[str, str, str]:
        """The labels (device, gpu, UUID) of torch's device ``index``."""
        if index not in self._identity:
            import torch  # noqa: PLC0415

            uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
            self._identity[index] = cuda_identity(
                index, uuid, os.environ.get("CUDA_VISIBLE_DEVICES")
            )
        return self._identity[index]


def cuda_identity(index: int, uuid: str, visible: str | None) -> tuple[str, str, str]:
    """The labels (device, gpu, UUID) of torch's CUDA device ``index``, spelt as dcgm-exporter
    spells the GPU: ``UUID`` as ``GPU-<uuid>``, ``gpu`` as the NVML index, known when
    ``CUDA_VISIBLE_DEVICES`` is absent or lists indices (a UUID list leaves only the UUID)."""
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    gpu = str(index)
    if visible is not None and visible.strip():
        entries = [v.strip() for v in visible.split(",")]
        gpu = entries[index] if index < len(entries) and entries[index].isdigit() else ""
    return f"cuda:{index}", gpu, uuid


class CudaCollector(Collector):
    """The process's CUDA memory, read from the allocator at scrape time (no synchronisation)."""

    _FIELDS = (
        ("esper_cuda_memory_allocated_bytes", "allocated_bytes.all.current"),
        ("esper_cuda_memory_reserved_bytes", "reserved_bytes.all.current"),
        ("esper_cuda_memory_peak_allocated_bytes", "allocated_bytes.all.peak"),
        ("esper_cuda_oom_total", "num_ooms"),
    )

    def __init__(self, source: CudaStatsSource | None = None) -> None:
        self._source = source if source is not None else CudaStatsSource()

    def collect(self) -> Iterator[Metric]:
        families = []
        for name, _ in self._FIELDS:
            spec = METRICS_BY_NAME[name]
            cls = CounterMetricFamily if spec.kind is MetricKind.COUNTER else GaugeMetricFamily
            families.append(cls(spec.family, spec.help, labels=list(spec.labels)))
        if self._source.ready():
            for index in range(self._source.device_count()):
                stats = self._source.memory_stats(index)
                labels = list(self._source.identity(index))
                for family, (_, key) in zip(families, self._FIELDS, strict=True):
                    family.add_metric(labels, float(stats.get(key, 0)))
        yield from families


def cuda_available() -> bool:
    try:
        import torch  # noqa: PLC0415 - the exporter works without torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False
