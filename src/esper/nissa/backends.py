"""One factory for a hub's backends: ``esper train``, ``esper telemetry replay`` and
``esper offline compare`` all attach theirs here, from a ``BackendSpec``.

A spec names any subset of the backends (a JSONL file, a run directory, Prometheus
``/metrics`` with an optional scrape-target file, OpenTelemetry traces); ``attach_backends``
builds them, attaches them, announces where each one writes, and returns the
``TelemetrySetup`` a closing summary reads. A bad path or port raises ``BackendConfigError``
naming it, before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline import RankInfo
from esper.nissa.hub.hub import NissaHub
from esper.nissa.otel import (
    OTelOutput,
    RecordedTraces,
    check_otel_environment,
    otlp_configured,
    traces_endpoint,
)
from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.budget import SERIES_BUDGET_PER_RANK, SeriesEstimate
from esper.nissa.prometheus.catalogue import MetricDetail
from esper.nissa.record.files import (
    DirectoryOutput,
    FileOutput,
    free_run_dir_name,
    rank_file_name,
)

__all__ = [
    "BackendSpec",
    "TelemetrySetup",
    "attach_backends",
    "free_run_dir_name",
    "rank_file_name",
]


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """Which backends a hub gets, and how they are set up."""

    telemetry_file: Path | None = None
    telemetry_dir: Path | None = None
    metrics_port: int | None = None
    """Serve ``/metrics`` on this port (0: a free one); None: no Prometheus backend."""
    metrics_addr: str = "127.0.0.1"
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    metrics_tls_client_ca: Path | None = None
    metrics_sd_dir: Path | None = None
    """Register the endpoint as a Prometheus file_sd target here."""
    metrics_sd_host: str | None = None
    metrics_sd_labels: Mapping[str, str] = field(default_factory=dict)
    otlp_endpoint: str | None = None
    otlp_from_environment: bool = False
    metrics_detail: MetricDetail = MetricDetail.ENV
    """Per-env series, or folded over the rank's envs (``--metrics-detail``)."""
    series_estimate: SeriesEstimate | None = None
    """What this rank's ``/metrics`` will serve (announced, and warned about over budget)."""
    otlp_recorded: bool = False
    """The events come from a record: one trace exporter per recorded process, with the
    recorded times (``esper.nissa.otel.RecordedTraces``)."""
    """Also export traces when only ``OTEL_EXPORTER_OTLP_*`` names an endpoint."""
    rank: RankInfo | None = None
    """One rank of a multi-rank run: a JSONL file per rank (``<stem>.rank<R><suffix>``, in
    the shared run directory ``run_dir_name``), /metrics on ``metrics_port + local_rank``
    (unless 0), scrape-target labels and trace resource naming the rank."""
    run_dir_name: str | None = None
    """The run directory rank 0 chose (multi-rank runs)."""


@dataclass(slots=True)
class TelemetrySetup:
    """Where a hub's telemetry goes, for the closing summary."""

    hub: NissaHub
    destinations: list[str] = field(default_factory=list)
    prometheus: PrometheusOutput | None = None
    run_dir: Path | None = None
    """The run directory this process writes (``--telemetry-dir``)."""


def over_budget_warning(estimate: SeriesEstimate) -> str:
    """The startup warning of a rank whose ``/metrics`` passes the series budget."""
    head = (
        f"warning: /metrics: up to {estimate.total:,} series on this rank, over the budget of "
        f"{SERIES_BUDGET_PER_RANK:,} per rank"
    )
    if estimate.detail is MetricDetail.ENV:
        return (
            f"{head} ({estimate.per_env} per env x {estimate.envs} envs); --metrics-detail rank "
            f"folds the per-env series over the rank's envs ({estimate.rank_detail_total:,} "
            "series; the JSONL keeps every env), or fewer envs per rank keep a scrape cheap "
            "(docs/SCALING.md)"
        )
    return f"{head} at rank detail (docs/SCALING.md)"


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)


def attach_backends(
    hub: NissaHub,
    spec: BackendSpec,
    *,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> TelemetrySetup:
    """Build and attach the backends ``spec`` names; ``announce`` each destination as it
    opens. Raises BackendConfigError naming the path, port or variable that cannot be used,
    before any backend exists (a bad OTEL_* variable leaves no empty run directory)."""
    traces = spec.otlp_endpoint is not None or (spec.otlp_from_environment and otlp_configured())
    if traces:
        check_otel_environment()
    setup = TelemetrySetup(hub)
    rank = spec.rank if spec.rank is not None and spec.rank.distributed else None
    if spec.telemetry_file is not None:
        path = spec.telemetry_file
        if rank is not None:
            path = path.with_name(rank_file_name(path.name, rank.rank))
        file_out = FileOutput(path)
        hub.add_backend(file_out)
        setup.destinations.append(f"JSONL file: {file_out.path}")
    if spec.telemetry_dir is not None:
        dir_out = (
            DirectoryOutput(spec.telemetry_dir)
            if rank is None
            else DirectoryOutput(spec.telemetry_dir, rank=rank.rank, name=spec.run_dir_name)
        )
        hub.add_backend(dir_out)
        announce(f"Telemetry will be saved to: {dir_out.output_dir}")
        setup.destinations.append(f"run directory: {dir_out.output_dir}")
        setup.run_dir = Path(dir_out.output_dir)
    if spec.metrics_port is not None:
        prom = PrometheusOutput(
            hub_stats=hub.stats, multi_rank=rank is not None, detail=spec.metrics_detail
        )
        wanted = spec.metrics_port
        if rank is not None and wanted:
            wanted += rank.local_rank  # one port per rank of this node
        port = prom.serve(
            wanted,
            spec.metrics_addr,
            certfile=_opt(spec.metrics_tls_cert),
            keyfile=_opt(spec.metrics_tls_key),
            client_cafile=_opt(spec.metrics_tls_client_ca),
        )
        scheme = "https" if spec.metrics_tls_cert else "http"
        host = f"[{spec.metrics_addr}]" if ":" in spec.metrics_addr else spec.metrics_addr
        url = f"{scheme}://{host}:{port}/metrics"
        setup.prometheus = prom
        hub.add_backend(prom)
        estimate = spec.series_estimate
        size = ""
        if estimate is not None:
            size = f" (up to {estimate.total:,} series on this rank, {estimate.detail} detail)"
        announce(f"Serving Prometheus metrics at {url}{size}")
        if estimate is not None and estimate.over_budget:
            announce(over_budget_warning(estimate))
        setup.destinations.append(f"Prometheus metrics: {url}")
        if spec.metrics_sd_dir is not None:
            sd = prom.write_sd_file(
                spec.metrics_sd_dir,
                host=spec.metrics_sd_host or spec.metrics_addr,
                labels={**spec.metrics_sd_labels, **({} if rank is None else rank.labels)},
            )
            setup.destinations.append(f"scrape target registered in {sd}")
    if traces:
        otel: OTelOutput | RecordedTraces = (
            RecordedTraces(endpoint=spec.otlp_endpoint)
            if spec.otlp_recorded
            else OTelOutput(endpoint=spec.otlp_endpoint, run_id=hub.run_id, rank=rank)
        )
        hub.add_backend(otel)
        where = (
            traces_endpoint(spec.otlp_endpoint)
            if spec.otlp_endpoint
            else "the endpoint in OTEL_EXPORTER_OTLP_*"
        )
        announce(f"Exporting traces over OTLP/HTTP to {where}")
        setup.destinations.append(f"OpenTelemetry traces: {where}")
    return setup
