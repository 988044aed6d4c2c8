"""PrometheusOutput: turns events into metrics on its own registry and serves ``/metrics``.

Every family of the metric catalogue (``esper.nissa.metric_catalogue.METRICS``) is registered on a
``CollectorRegistry`` of the backend's own (never the global one). Labelled children are bound
once and cached, since ``.labels(...)`` costs about a microsecond a call. Counters whose label
values are known in advance (anomaly scopes and kinds, heads, stages) start at zero, so
``increase()`` sees their first step. Labels are bounded: env, slot, head, stage, blueprint,
op and reason; never a seed or event id.

``serve()`` starts the HTTP endpoint (127.0.0.1 unless told otherwise, optional TLS); a port
in use is a BackendConfigError raised before training starts. ``write_sd_file`` registers the
endpoint for Prometheus file-based service discovery and ``close`` removes it again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from esper.leyline import (
    ACTION_HEADS,
    COLLECTIVE_OPS,
    DISCRIMINATORS,
    BackendConfigError,
    Op,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
    allowed_values,
)
from esper.nissa._backend import OutputBackend
from esper.nissa._fork import register_fork_resource
from esper.nissa._hub import HubStats, block_shutdown_signals
from esper.nissa.metric_catalogue import (
    METRICS,
    METRICS_BY_NAME,
    Derived,
    MetricKind,
    MetricSpec,
    Update,
    derived,
)
from esper.nissa.metrics_server import LingerResult, MetricsServer, TlsFiles

ET = TelemetryEventType
_ANOMALY_SCOPES = allowed_values(TelemetryEventType.GRADIENT_ANOMALY, "scope")
_ANOMALY_KINDS = allowed_values(TelemetryEventType.GRADIENT_ANOMALY, "kind")
_INACTIVE = frozenset({"DORMANT"})
_READ_AT_SCRAPE = frozenset(
    {"esper_telemetry_events_dropped_total", "esper_telemetry_backend_lost_total"}
)


OWNER_HOST = "__esper_host"
OWNER_PID = "__esper_pid"
OWNER_START = "__esper_start"
"""Labels of a registered target that name the process serving it (dropped by Prometheus)."""


def process_start_ticks(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``), or None. With the
    pid it names one process: a pid reused by a later process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    return stat.rsplit(")", 1)[1].split()[19]


class _HubCollector(Collector):
    """Drop counts read from the hub at scrape time (they are counted where they happen)."""

    def __init__(self, stats: Callable[[], HubStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        spec = METRICS_BY_NAME["esper_telemetry_events_dropped_total"]
        family = CounterMetricFamily(spec.family, spec.help, labels=["backend"])
        stats = self._stats()
        family.add_metric(["hub"], stats.dropped)
        for b in stats.backends:  # its own queue's drops; the hub's are the 'hub' series
            family.add_metric([b.name], b.dropped - b.dropped_at_hub)
        yield family
        lost_spec = METRICS_BY_NAME["esper_telemetry_backend_lost_total"]
        lost = CounterMetricFamily(lost_spec.family, lost_spec.help, labels=["backend"])
        for b in stats.backends:
            lost.add_metric([b.name], b.lost)
        yield lost


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


class _CudaCollector(Collector):
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


def _cuda_available() -> bool:
    try:
        import torch  # noqa: PLC0415 - the exporter works without torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


class PrometheusOutput(OutputBackend):
    """Prometheus metrics from telemetry events (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        hub_stats: Callable[[], HubStats] | None = None,
        cuda: bool | CudaStatsSource | None = None,
        multi_rank: bool = False,
    ) -> None:
        """``multi_rank``: this process is one rank of several, so its collective series
        exist (empty) from the first scrape; ``rate()`` then has a sample from before the
        first collective even in a run that trains for less than two scrape intervals."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()  # the hub lane and direct callers may both emit
        register_fork_resource(self)
        self._m: dict[str, Any] = {}
        for spec in METRICS:
            if spec.name.startswith("esper_cuda_") or spec.name in _READ_AT_SCRAPE:
                continue
            if spec.kind is MetricKind.GAUGE:
                metric: Any = Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind is MetricKind.COUNTER:
                metric = Counter(spec.family, spec.help, spec.labels, registry=self.registry)
            else:
                metric = Histogram(
                    spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets
                )
            self._m[spec.name] = metric
        if hub_stats is not None:
            self.registry.register(_HubCollector(hub_stats))
        if isinstance(cuda, CudaStatsSource):
            self.registry.register(_CudaCollector(cuda))
        elif cuda if cuda is not None else _cuda_available():
            self.registry.register(_CudaCollector())
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        # Metrics the catalogue derives from one event field (MetricSpec.update): applied by
        # _apply_derived with no handler code; the handlers below do the rest.
        self._derived: dict[tuple[str, str | None], list[tuple[MetricSpec, Derived]]] = {}
        for spec in METRICS:
            if spec.update is not None and spec.name in self._m:
                d = derived(spec)
                self._derived.setdefault((d.event_type, d.variant), []).append((spec, d))
        self._seed_stages: dict[tuple[int, str], str] = {}
        self._seed_series: dict[int, set[str]] = {}
        self._envs: set[str] = set()  # env ids seen, for a window over every env
        self._reward_parts: dict[int, dict[str, float]] = {}
        self._episodes_seen: int | None = None
        self._server: MetricsServer | None = None
        self._sd_file: Path | None = None
        self._closed = False
        self._preinitialise()
        if multi_rank:
            for op in COLLECTIVE_OPS:
                self._child("esper_collective_wait_seconds", op)
        self._handlers: dict[TelemetryEventType, Callable[[TelemetryEvent], None]] = {
            ET.TRAINING_STARTED: self._on_training_started,
            ET.TRAINING_COMPLETED: self._on_training_completed,
            ET.PPO_UPDATE_COMPLETED: self._on_ppo_update,
            ET.EPOCH_COMPLETED: self._on_epoch,
            ET.BATCH_EPOCH_COMPLETED: self._on_batch,
            ET.ANALYTICS_SNAPSHOT: self._on_snapshot,
            ET.SEED_GERMINATED: self._on_germinated,
            ET.SEED_STAGE_CHANGED: self._on_stage_changed,
            ET.COUNTERFACTUAL_COMPUTED: self._on_counterfactual,
            ET.TELEMETRY_LEVEL_CHANGED: self._on_level_changed,
        }

    # -- children, bound once --------------------------------------------------------------

    def _child(self, name: str, *labels: str) -> Any:
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            metric = self._m[name]
            child = metric.labels(*labels) if labels else metric
            self._children[key] = child
        return child

    def _preinitialise(self) -> None:
        for scope in _ANOMALY_SCOPES:
            for kind in _ANOMALY_KINDS:
                self._child("esper_gradient_anomalies_total", scope, kind)
        for head in ACTION_HEADS:
            self._child("esper_action_mask_hits_total", head)
            self._child("esper_action_mask_checks_total", head)
        for op in Op:
            for success in ("true", "false"):
                self._child("esper_actions_total", op.name, success)
        for stage in SeedStage:
            if stage.name != "UNKNOWN":
                self._child("esper_seeds", stage.name).set(0)
        for event_type in ET:
            self._child("esper_telemetry_events_total", event_type.name)

    deliver_in_forked_child = False
    """The endpoint, and the scrape target it registered, belong to the parent."""

    def _reinit_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._closed = True  # a child must never unregister or stop the parent's endpoint

    # -- OutputBackend ---------------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> None:
        with self._lock:
            self._child("esper_telemetry_events_total", event.event_type.name).inc()
            self._apply_derived(event)
            handler = self._handlers.get(event.event_type)
            if handler is not None:
                handler(event)

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
        server = MetricsServer(self.registry, port, addr, tls)
        # The server's threads inherit this thread's signal mask: keep Ctrl-C for the main one.
        previous_mask = block_shutdown_signals()
        try:
            server.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
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

    def write_sd_file(
        self, directory: str | os.PathLike[str], *, host: str, labels: dict[str, str]
    ) -> Path:
        """Register this endpoint for Prometheus file-based service discovery: writes
        ``directory/esper-<run_id>.json`` (``esper-<run_id>-rank<R>.json`` for a rank of a
        multi-rank run, labelled ``rank``) atomically; ``close()`` removes it.

        The target also names its owner (host, pid and the process's start time) in labels
        that begin with ``__``: Prometheus drops those after relabelling, so they never reach a
        series, and ``esper targets prune`` uses them to remove the targets of dead processes.
        """
        if self.port is None:
            raise BackendConfigError("write_sd_file needs serve() first")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
            host = socket.gethostname()
        target = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            rank = f"-rank{labels['rank']}" if "rank" in labels else ""
            name = f"esper-{labels.get('run_id', os.getpid())}{rank}.json"
            owner = {
                OWNER_HOST: socket.gethostname(),
                OWNER_PID: str(os.getpid()),
                OWNER_START: process_start_ticks(os.getpid()) or "",
            }
            payload = json.dumps([{"targets": [target], "labels": {**labels, **owner}}], indent=2)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".esper-", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; Prometheus may run as another user
            path = directory / name
            os.replace(tmp, path)
        except OSError as exc:
            raise BackendConfigError(
                f"cannot write service discovery file in {directory}: {exc.strerror or exc}"
            ) from exc
        self._sd_file = path
        return path

    # -- handlers --------------------------------------------------------------------------

    def _apply_derived(self, e: TelemetryEvent) -> None:
        d = e.data
        disc = DISCRIMINATORS.get(e.event_type)
        updates = self._derived.get((e.event_type.name, None if disc is None else d.get(disc)))
        for spec, how in updates or ():
            labels = tuple(str(d[label]) for label in spec.labels)
            if how.update is Update.COUNT:
                self._child(spec.name, *labels).inc()
                continue
            value = d[how.field] if how.field is not None else None
            if value is None:
                continue  # a nullable field with nothing to report this time
            if how.update is Update.MS:
                self._child(spec.name, *labels).observe(value / 1000.0)
            elif how.update is Update.PERCENT:
                self._child(spec.name, *labels).set(value / 100.0)
            elif how.update is Update.FLAG:
                self._child(spec.name, *labels).set(1.0 if value else 0.0)
            else:
                self._child(spec.name, *labels).set(value)

    def _set(self, name: str, value: float, *labels: str) -> None:
        self._child(name, *labels).set(value)

    def _on_training_started(self, e: TelemetryEvent) -> None:
        d = e.data
        # Every slot x blueprint starts at zero, so increase() sees the first germination
        # and dashboards draw a zero line rather than no data.
        for slot_id in d["slot_ids"]:
            for blueprint_id in d["blueprint_ids"]:
                self._child("esper_seed_germinated_total", str(slot_id), str(blueprint_id))
                self._child("esper_seed_fossilized_total", str(slot_id), str(blueprint_id))
        self._set("esper_run_info", 1, str(d["run_id"]), str(d["task"]), str(d["mode"]),
                  str(d["reward_mode"]))  # fmt: skip

    def _on_training_completed(self, e: TelemetryEvent) -> None:
        # The episodes of a run without BATCH_EPOCH_COMPLETED; of a multi-rank run, counted
        # by rank 0 alone (every rank reports the run's episodes).
        if e.data["status"] == "completed" and self._episodes_seen is None and not e.rank:
            self._child("esper_episodes_completed_total").inc(e.data["episodes_completed"])

    def _on_ppo_update(self, e: TelemetryEvent) -> None:
        d = e.data
        for head in ACTION_HEADS:
            self._set("esper_ppo_head_entropy", d[f"head_{head}_entropy"], head)
            self._set("esper_ppo_head_grad_norm", d[f"head_{head}_grad_norm"], head)

    def _on_epoch(self, e: TelemetryEvent) -> None:
        d = e.data
        if d["scope"] != "env":
            return
        env = str(d["env_id"])
        self._set("esper_last_progress_timestamp_seconds", e.timestamp_ns / 1e9)
        # The seeds map is the truth about this env's slots: it also covers hosts that were
        # replaced at an episode boundary without a lifecycle event.
        env_id = int(d["env_id"])
        if env not in self._envs:
            self._envs.add(env)
            self._set("esper_env_telemetry_escalated", 0.0, env)  # its level until an anomaly
        seeds: dict[str, dict[str, Any]] = d["seeds"]
        for key in [k for k in self._seed_stages if k[0] == env_id]:
            del self._seed_stages[key]
        live = set()
        for slot_id, s in seeds.items():
            self._seed_stages[(env_id, slot_id)] = s["stage"]
            live.add(slot_id)
            self._set("esper_seed_alpha", s["alpha"], env, slot_id)
            self._set("esper_seed_gradient_norm", s["gradient_norm"], env, slot_id)
            self._set("esper_seed_gradient_total_norm", s["gradient_total_norm"], env, slot_id)
            self._set("esper_seed_gradient_health", s["gradient_health"], env, slot_id)
        for slot_id in self._seed_series.get(env_id, set()) - live:
            for name in ("esper_seed_alpha", "esper_seed_gradient_norm",
                         "esper_seed_gradient_total_norm",
                         "esper_seed_gradient_health"):  # fmt: skip
                self._m[name].remove(env, slot_id)
                self._children.pop((name, (env, slot_id)), None)
        self._seed_series[env_id] = live
        self._refresh_stage_counts()

    def _on_level_changed(self, e: TelemetryEvent) -> None:
        d = e.data
        value = 1.0 if d["to_level"] == "debug" else 0.0
        envs = self._envs if d["env_id"] is None else {str(d["env_id"])}
        for env in envs:
            self._set("esper_env_telemetry_escalated", value, env)

    def _refresh_stage_counts(self) -> None:
        counts = dict.fromkeys((s.name for s in SeedStage if s.name != "UNKNOWN"), 0)
        for stage in self._seed_stages.values():
            counts[stage] = counts.get(stage, 0) + 1
        for stage, n in counts.items():
            self._set("esper_seeds", n, stage)

    def _on_batch(self, e: TelemetryEvent) -> None:
        d = e.data
        if self._episodes_seen is None:
            self._episodes_seen = d["start_episode"]
        delta = d["episodes_completed"] - self._episodes_seen
        if delta > 0:
            self._child("esper_episodes_completed_total").inc(delta)
            self._episodes_seen = d["episodes_completed"]

    def _on_snapshot(self, e: TelemetryEvent) -> None:
        d = e.data
        kind = d["kind"]
        if kind == "mask_hit_rates":
            for head, hits in d["mask_hits"].items():
                total = d["mask_total"].get(head, 0)
                self._child("esper_action_mask_hits_total", head).inc(hits)
                self._child("esper_action_mask_checks_total", head).inc(total)
                self._set("esper_action_mask_hit_ratio", hits / total if total else 0.0, head)
        elif kind == "action_distribution":
            for op, n in d["action_counts"].items():
                ok = d["success_counts"].get(op, 0)
                self._child("esper_actions_total", op, "true").inc(ok)
                self._child("esper_actions_total", op, "false").inc(max(n - ok, 0))
        elif kind == "collectives":
            for op, seconds in d["wait_seconds"].items():
                child = self._child("esper_collective_wait_seconds", str(op))
                for s in seconds:
                    child.observe(s)
        elif kind == "reward_summary":
            self._reward_parts[int(d["env_id"])] = dict(d["summary"])
            parts = self._reward_parts.values()
            for component in {c for p in parts for c in p}:
                values = [p[component] for p in parts if component in p]
                self._set("esper_reward_component", sum(values) / len(values), component)

    def _on_germinated(self, e: TelemetryEvent) -> None:
        self._seed_stages[(int(e.data["env_id"]), str(e.data["slot_id"]))] = "GERMINATED"
        self._refresh_stage_counts()

    def _on_stage_changed(self, e: TelemetryEvent) -> None:
        d = e.data
        key = (int(d["env_id"]), str(d["slot_id"]))
        if d["to_stage"] in _INACTIVE:
            self._seed_stages.pop(key, None)
        else:
            self._seed_stages[key] = d["to_stage"]
        self._refresh_stage_counts()

    def _on_counterfactual(self, e: TelemetryEvent) -> None:
        if not e.data["available"]:
            reason = str(e.data["reason"] or "unknown")
            self._child("esper_counterfactual_unavailable_total", reason).inc()


def families(registry: CollectorRegistry) -> set[str]:
    """Names of the metric families a registry exposes (counters with ``_total``)."""
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
