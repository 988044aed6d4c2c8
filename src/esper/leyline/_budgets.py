"""The telemetry budgets: what "fast" and "safe" mean, as numbers code and benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PerformanceBudgets:
    """Limits the telemetry must stay inside (SPEC section 9). Times are in seconds."""

    emit_median_seconds: float = 1e-6
    emit_p99_seconds: float = 10e-6
    create_and_emit_median_seconds: float = 2e-6
    training_overhead_ratio: float = 0.01
    host_syncs_per_epoch_per_env: int = 1
    hub_queue_capacity: int = 65_536
    """High-rate events queued per hub before new ones are dropped (and counted)."""
    backend_queue_capacity: int = 65_536
    """High-rate events queued per backend before new ones are dropped (and counted)."""
    shutdown_timeout_seconds: float = 5.0
    """How long exporters that talk to the network may take to shut down."""
    metrics_render_seconds: float = 0.020


DEFAULT_BUDGETS = PerformanceBudgets()
