"""The OpenTelemetry SDK's side of tracing: the OTLP/HTTP exporter and the standard OTEL_*
variables it reads (checked), a counting wrapper that knows what was exported and what failed,
and the ids every span of a run gets (derived from the run id and the span's key, so a run
exported live and replayed from its record is one trace with the same spans)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from esper.leyline import BackendConfigError

EXPORT_TIMEOUT_SECONDS = 3.0
"""Per-export timeout unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT says otherwise."""


class _CountingExporter(SpanExporter):
    """Counts spans exported and spans whose export failed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter failure must not kill the worker
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def traces_endpoint(base: str) -> str:
    """The OTLP/HTTP traces URL for ``--otlp-endpoint`` (a base URL, like
    OTEL_EXPORTER_OTLP_ENDPOINT): ``/v1/traces`` is appended unless already there."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


OTEL_URL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def check_otel_environment() -> None:
    """BackendConfigError naming the variable when a standard OTEL_* variable the exporter
    reads cannot be used: an endpoint that is not an http(s) URL, a timeout that is not a
    positive number. Checked where they are read, before any work."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    for name in OTEL_URL_VARIABLES:
        value = os.environ.get(name)
        if value:
            try:
                parts = urlsplit(value)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
                _ = parts.port  # a port out of range raises
            except ValueError:
                ok = False
            if not ok:
                raise BackendConfigError(f"{name}={value!r}: not an http(s) URL "
                                         "(e.g. http://127.0.0.1:4318)")  # fmt: skip
    for name in OTEL_TIMEOUT_VARIABLES:
        value = os.environ.get(name)
        if value:
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not 0 < number < float("inf"):
                raise BackendConfigError(f"{name}={value!r}: not a positive number")


def otlp_configured() -> bool:
    """True when the standard OTEL_* variables name an OTLP endpoint for traces."""
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def otlp_exporter(endpoint: str | None = None) -> SpanExporter:
    """An OTLP/HTTP protobuf exporter. ``endpoint`` (a base URL) wins over the OTEL_*
    variables; headers, compression and certificates come from the standard variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    check_otel_environment()
    timeout_env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    timeout = None if timeout_env else EXPORT_TIMEOUT_SECONDS
    try:
        return OTLPSpanExporter(
            endpoint=None if endpoint is None else traces_endpoint(endpoint), timeout=timeout
        )
    except Exception as exc:
        raise BackendConfigError(f"cannot set up the OTLP exporter: {exc}") from exc


def run_trace_ids(run_id: str) -> tuple[int, int]:
    """(trace id, run span id) of a run: from its id, the same in every process."""
    digest = hashlib.sha256(f"esper.run/{run_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def span_id_for(run_id: str, key: str) -> int:
    """The id of the span ``key`` names in run ``run_id``: the same live and replayed."""
    digest = hashlib.sha256(f"esper.span/{run_id}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


class _RunIds(RandomIdGenerator):
    """Every root span gets the run's trace id. The span started next after ``claim`` gets
    the id ``claim`` named: the run span's (``claim_run``), or one derived from the run and
    the span's key (``span_id_for``), so a run exported live and replayed from its record is
    one trace with the same spans."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.trace_id, self.run_span_id = run_trace_ids(run_id)
        self._next_span: int | None = None

    def claim_run(self) -> None:
        self._next_span = self.run_span_id

    def claim(self, key: str) -> None:
        self._next_span = span_id_for(self.run_id, key)

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        span_id, self._next_span = self._next_span, None
        return span_id if span_id is not None else super().generate_span_id()
