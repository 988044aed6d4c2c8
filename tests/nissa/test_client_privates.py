"""The private names of prometheus_client that Esper reads, named in one place.

``esper.nissa.prometheus.exposition`` (the cached render, byte for byte ``generate_latest``)
and ``esper.nissa.prometheus.backfill`` read a metric's and a child's private attributes.
``pyproject.toml`` pins the release range that has them; a release that moves one fails here,
naming it, rather than somewhere deep in a render."""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as client_metrics

READ = {
    "metric": ("_name", "_type", "_documentation", "_labelnames", "_metrics"),
    "counter child": ("_value", "_created", "_samples"),
    "gauge child": ("_value", "_samples"),
    "histogram child": ("_upper_bounds", "_buckets", "_sum", "_created", "_samples"),
    "value": ("_value",),
}
"""Who -> the private names of it that esper.nissa reads."""


def _objects() -> dict[str, Any]:
    registry = CollectorRegistry()
    counter = Counter("walk_total", "h", ["a"], registry=registry)
    gauge = Gauge("walk_gauge", "h", ["a"], registry=registry)
    histogram = Histogram("walk_seconds", "h", ["a"], registry=registry, buckets=(1.0,))
    child = counter.labels("x")
    return {
        "metric": counter,
        "counter child": child,
        "gauge child": gauge.labels("x"),
        "histogram child": histogram.labels("x"),
        "value": child._value,
    }


@pytest.mark.parametrize(("who", "name"), [(w, n) for w, names in READ.items() for n in names])
def test_every_private_name_esper_reads_is_there(who: str, name: str) -> None:
    obj = _objects()[who]
    assert hasattr(obj, name), (
        f"prometheus_client {prometheus_client.__version__}: the {who} has no {name}, which "
        "esper.nissa.prometheus.exposition or esper.nissa.prometheus.backfill reads; keep the "
        "pinned range in pyproject.toml, or port the reader to the new release"
    )


def test_the_values_are_what_the_readers_expect() -> None:
    objs = _objects()
    objs["counter child"].inc(3)
    assert objs["value"]._value == 3.0
    assert isinstance(objs["metric"]._metrics, dict)
    assert objs["metric"]._labelnames == ("a",)
    assert objs["histogram child"]._upper_bounds == [1.0, float("inf")]
    assert isinstance(client_metrics._use_created, bool)  # the module flag read at render
