"""The Prometheus path: the catalogue, the event-to-sample mapping, exposition, serving."""

from esper.nissa.prometheus.output import (
    PrometheusOutput,
)

__all__ = [
    "PrometheusOutput",
]
