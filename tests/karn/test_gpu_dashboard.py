"""The GPU dashboard's queries, answered by a real Prometheus.

No GPU here: a loopback endpoint serves every counter of ``deploy/dcgm/counters.csv`` shaped
as dcgm-exporter serves it (field name as the metric name; labels gpu, UUID, pci_bus_id, device,
modelName, Hostname), and the real exporter serves the trainer's CUDA gauges from an allocator
stand-in. Prometheus scrapes both; every panel of the GPU dashboard, and every CUDA panel of the
others, must return data.
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from esper.karn.grafana import DASHBOARDS, GPU_DASHBOARD, REQUIRES_CUDA, panel_queries
from esper.nissa.prometheus import PrometheusOutput
from tests._stack import DEPLOY, REPO, _process, free_port, query_range, wait_until
from tests.nissa.test_cuda_metrics import FakeAllocator, _stats

pytestmark = pytest.mark.slow

UUID = "GPU-5fd3a1c2-7e0b-4c51-9a3e-2b8f0c6d1e47"
DCGM_LABELS = (
    f'gpu="2",UUID="{UUID}",pci_bus_id="00000000:18:00.0",device="nvidia2",'
    'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1"'
)


def dcgm_fields() -> list[tuple[str, str]]:
    """(field, type) of every counter the stack's dcgm-exporter is configured with."""
    out = []
    for line in (DEPLOY / "dcgm" / "counters.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            field, kind, _ = (part.strip() for part in line.split(",", 2))
            out.append((field, kind))
    return out


class DcgmShapedEndpoint:
    """Serves dcgm-exporter's text format; counters grow with every scrape."""

    def __init__(self) -> None:
        scrapes = itertools.count(1)
        fields = dcgm_fields()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                n = next(scrapes)
                lines = []
                for field, kind in fields:
                    value = 1000 * n if kind == "counter" else 42
                    lines += [f"# HELP {field} {field}", f"# TYPE {field} {kind}",
                              f"{field}{{{DCGM_LABELS}}} {value}"]  # fmt: skip
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_counters_file_keeps_the_exporters_defaults_and_adds_what_the_alerts_use() -> None:
    fields = dict(dcgm_fields())
    for default in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                    "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_SM_CLOCK",
                    "DCGM_FI_DEV_XID_ERRORS"):  # fmt: skip
        assert default in fields
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = (REPO / "dashboards" / GPU_DASHBOARD).read_text()
    used = set(re.findall(r"DCGM_FI_[A-Z_]+", alerts + dashboard))
    assert used <= set(fields), f"not exported by the stack's dcgm-exporter: {used - set(fields)}"


@pytest.fixture(scope="module")
def gpu_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed (Debian package prometheus)"
    tmp: Path = tmp_path_factory.mktemp("gpu")
    dcgm = DcgmShapedEndpoint()
    trainer = PrometheusOutput(cuda=FakeAllocator([_stats(1 << 30, 3 << 30, 2 << 30, 1)]))
    trainer.serve(port=0)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "dcgm", "static_configs": [{"targets": [f"127.0.0.1:{dcgm.port}"]}]},
            {"job_name": "esper-trainer",
             "static_configs": [{"targets": [f"127.0.0.1:{trainer.port}"]}]},
        ],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    try:
        with _process(cmd, tmp / "prometheus.log", f"{base}/-/ready", "Prometheus"):
            yield base, time.time()
    finally:
        trainer.close()
        dcgm.close()


def _gpu_queries() -> list[tuple[str, str, str]]:
    out = []
    for name in DASHBOARDS:
        text = (REPO / "dashboards" / name).read_text()
        for title, desc, uid, expr in panel_queries(text):
            if name == GPU_DASHBOARD or REQUIRES_CUDA in desc:
                assert uid == "esper-prometheus"
                out.append((name, title, expr))
    return out


def test_every_gpu_and_cuda_panel_returns_data(gpu_prometheus: tuple[str, float]) -> None:
    base, started = gpu_prometheus
    queries = _gpu_queries()
    assert len(queries) >= 20
    for name, title, expr in queries:
        promql = (
            expr.replace("$__rate_interval", "5s")
            .replace('"$host"', '".*"').replace('"$gpu"', '".*"').replace('"$instance"', '".*"')
            .replace('"$rank"', '".*"')
        )  # fmt: skip

        def has_data(q: str = promql) -> bool:
            return bool(query_range(base, q, started, time.time()))

        wait_until(has_data, 30, f"data for {name} / {title}: {promql}", step=0.5)


def test_the_trainer_share_of_gpu_memory_joins_on_uuid(gpu_prometheus: tuple[str, float]) -> None:
    """The join the dashboard and EsperGPUIdle rely on: the trainer's UUID label equals DCGM's."""
    base, started = gpu_prometheus
    promql = next(e for _, t, e in _gpu_queries() if t == "Trainer share of the GPU's memory")
    promql = promql.replace('"$host"', '".*"').replace('"$gpu"', '".*"')
    promql = promql.replace('"$instance"', '".*"').replace('"$rank"', '".*"')

    def joined() -> list[dict[str, Any]]:
        return query_range(base, promql, started, time.time())

    wait_until(lambda: bool(joined()), 30, "the UUID join")
    (series,) = joined()
    assert series["metric"] == {"UUID": UUID}
    # reserved 3 GiB over 42 MiB used by the (made-up) GPU
    assert float(series["values"][-1][1]) == pytest.approx((3 << 30) / (42 * 1048576))
