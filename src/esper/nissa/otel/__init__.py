"""The OpenTelemetry path: every seed's life as a trace, exported over OTLP/HTTP."""

from esper.nissa.otel.output import (
    DEFAULT_SERVICE_NAME,
    SHUTDOWN_SECONDS,
    OTelOutput,
)
from esper.nissa.otel.recorded import RecordedTraces
from esper.nissa.otel.sdk import (
    EXPORT_TIMEOUT_SECONDS,
    OTEL_TIMEOUT_VARIABLES,
    OTEL_URL_VARIABLES,
    check_otel_environment,
    otlp_configured,
    otlp_exporter,
    run_trace_ids,
    span_id_for,
    traces_endpoint,
)

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "EXPORT_TIMEOUT_SECONDS",
    "OTEL_TIMEOUT_VARIABLES",
    "OTEL_URL_VARIABLES",
    "SHUTDOWN_SECONDS",
    "OTelOutput",
    "RecordedTraces",
    "check_otel_environment",
    "otlp_configured",
    "otlp_exporter",
    "run_trace_ids",
    "span_id_for",
    "traces_endpoint",
]
