"""PrometheusOutput: the live exporter. Applies events to the one event-to-sample mapping
(``esper.nissa.prometheus.mapping``) and serves its registry on ``/metrics``.

Its parts live beside it, one concern per module: the mapping; serving ``/metrics`` and
tracking who scraped it (``esper.nissa.prometheus.server``); the ``file_sd`` target and the
identity of the process that owns it (``esper.nissa.prometheus.targets``); the CUDA gauges read at
scrape time (``esper.nissa.prometheus.cuda``). The registry is the backend's own, never the
global one. Hub drop counts are read at scrape time here.

``serve()`` starts the HTTP endpoint (127.0.0.1 unless told otherwise, optional TLS); a port
in use is a BackendConfigError raised before training starts. ``write_sd_file`` registers the
endpoint for Prometheus file-based service discovery and ``close`` removes it again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from esper.leyline import BackendConfigError, TelemetryEvent
from esper.nissa.hub.backend import OutputBackend
from esper.nissa.hub.fork import register_fork_resource
from esper.nissa.hub.signals import signals_blocked
from esper.nissa.hub.stats import HubStats
from esper.nissa.prometheus.catalogue import METRICS_BY_NAME, MetricDetail
from esper.nissa.prometheus.cuda import CudaCollector, CudaStatsSource, cuda_available
from esper.nissa.prometheus.exposition import CONTENT_TYPE, CachedExposition
from esper.nissa.prometheus.mapping import MetricMapping
from esper.nissa.prometheus.server import LingerResult, MetricsServer, TlsFiles, metrics_app
from esper.nissa.prometheus.targets import write_target_file


class _HubCollector(Collector):
    """Drop counts read from the hub at scrape time (they are counted where they happen)."""

    def __init__(self, stats: Callable[[], HubStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        spec = METRICS_BY_NAME["esper_telemetry_events_dropped_total"]
        family = CounterMetricFamily(spec.family, spec.help, labels=["backend"])
        stats = self._stats()
        for name, n in stats.dropped_by_backend().items():
            family.add_metric([name], n)
        yield family
        lost_spec = METRICS_BY_NAME["esper_telemetry_backend_lost_total"]
        lost = CounterMetricFamily(lost_spec.family, lost_spec.help, labels=["backend"])
        for name, n in stats.lost_by_backend().items():
            lost.add_metric([name], n)
        yield lost


class PrometheusOutput(OutputBackend):
    """Prometheus metrics from telemetry events (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        hub_stats: Callable[[], HubStats] | None = None,
        cuda: bool | CudaStatsSource | None = None,
        multi_rank: bool = False,
        detail: MetricDetail = MetricDetail.ENV,
    ) -> None:
        """``multi_rank``: this process is one rank of several; ``detail``: per env, or folded
        over the rank's envs (see ``MetricMapping``)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()  # the hub lane and direct callers may both emit
        register_fork_resource(self)
        self.mapping = MetricMapping(self.registry, multi_rank=multi_rank, detail=detail)
        scraped: list[Collector] = []
        if hub_stats is not None:
            scraped.append(_HubCollector(hub_stats))
        if isinstance(cuda, CudaStatsSource):
            scraped.append(CudaCollector(cuda))
        elif cuda if cuda is not None else cuda_available():
            scraped.append(CudaCollector())
        for collector in scraped:
            self.registry.register(collector)
        self.exposition = CachedExposition(self.mapping, scraped)
        self._server: MetricsServer | None = None
        self._sd_file: Path | None = None
        self._closed = False

    deliver_in_forked_child = False
    """The endpoint, and the scrape target it registered, belong to the parent."""

    def _reinit_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._closed = True  # a child must never unregister or stop the parent's endpoint

    # -- OutputBackend ---------------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> None:
        with self._lock:
            self.mapping.apply(event)

    def render(self) -> bytes:
        """``/metrics`` now: the registry in the text format, from cached lines (only the
        series written since the last render are formatted again)."""
        with self._lock:
            return self.exposition.render()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sd_file is not None:
            self._sd_file.unlink(missing_ok=True)
        if self._server is not None:
            self._server.close()

    # -- serving ---------------------------------------------------------------------------

    def serve(
        self,
        port: int = 0,
        addr: str = "127.0.0.1",
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        client_cafile: str | None = None,
    ) -> int:
        """Serve ``/metrics`` on addr:port (0 picks a free port); returns the port bound. A
        port in use or a TLS file that cannot be used is a BackendConfigError naming it."""
        if (certfile is None) != (keyfile is None):
            raise BackendConfigError("TLS for /metrics needs both a certificate and a key")
        tls = None
        if certfile is not None and keyfile is not None:
            ca = Path(client_cafile) if client_cafile is not None else None
            tls = TlsFiles(Path(certfile), Path(keyfile), ca)
        server = MetricsServer(metrics_app(self.render, CONTENT_TYPE), port, addr, tls)
        # The server's threads inherit this thread's signal mask: keep Ctrl-C for the main one.
        with signals_blocked():
            server.start()
        self._server = server
        return server.port

    def wait_for_final_scrape(self, timeout: float) -> LingerResult:
        """Block until every Prometheus that scraped ``/metrics`` (or, when none has yet, the
        first one) has read a response rendered after this call, so it holds everything
        delivered so far; at most ``timeout`` seconds. Other clients do not count."""
        if self._server is None:
            return LingerResult(scraped=(), missed=())
        return self._server.tracker.wait_for_final(timeout)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the endpoint is bound to, once serving."""
        return None if self._server is None else self._server.address

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.port

    @property
    def server(self) -> MetricsServer | None:
        """The ``/metrics`` server, once serving (its ``refused`` count, its tracker)."""
        return self._server

    def write_sd_file(
        self, directory: str | os.PathLike[str], *, host: str, labels: dict[str, str]
    ) -> Path:
        """Register this endpoint for Prometheus file-based service discovery
        (``esper.nissa.prometheus.targets.write_target_file``); ``close()`` removes it."""
        if self.port is None:
            raise BackendConfigError("write_sd_file needs serve() first")
        self._sd_file = write_target_file(directory, host=host, port=self.port, labels=labels)
        return self._sd_file
