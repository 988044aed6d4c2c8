"""``/metrics`` rendered from cached lines: a scrape formats only the series that changed.

``generate_latest`` rebuilds every sample of every family on every scrape: it collects each
metric into new objects, sorts and escapes every label set, and formats every value, all while
holding the GIL the training thread needs. Here each series' label text is built once, when
the series is born; each series' lines are re-formatted only when the mapping wrote to it since
the last scrape (``MetricMapping.changed``); and a family none of whose series changed is
served from its cached text. The families read at scrape time (hub drop counts, CUDA memory)
are few and are collected afresh each time.

The output is the Prometheus text format (0.0.4), byte for byte what ``generate_latest``
renders for the same registry (``tests/nissa/test_exposition.py`` compares the two after every
kind of change), so ``promtool check metrics`` accepts it. It is rendered under the exporter's
lock, so a scrape sees every family as of one instant, and concurrent scrapes take turns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from math import isfinite
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client import metrics as client_metrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from esper.nissa.prometheus.mapping import MetricMapping, SeriesKey

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_go_string = cast(Callable[[float], str], floatToGoString)


def format_value(d: float) -> str:
    """A value as the text format writes it (OpenMetrics reads it too): prometheus_client's
    ``floatToGoString``, with the common case (a finite value below a million) first."""
    if not isfinite(d):
        return _go_string(d)
    s = repr(d)
    if d > 0 and s.find(".") > 6:  # Go switches to an exponent sooner than Python
        return _go_string(d)
    return s


def escape(value: str) -> str:
    """A label value (or OpenMetrics help text) escaped for the exposition formats."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: dict[str, str]) -> str:
    """``{a="1",b="2"}`` with sorted names, as the text format writes it ('' for none)."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items())) + "}"


class _One:
    """A collector of one metric, for ``generate_latest``."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Any]:
        return self._collector.collect()


@dataclass(slots=True)
class _Series:
    """One series' lines: the label prefixes, built once; the text, when last formatted."""

    render: Callable[[], tuple[str, str]]
    """(its sample lines, its ``_created`` line) as of now."""
    main: str = ""
    created: str = ""


@dataclass(slots=True)
class _Family:
    metric: Any
    header: str
    created_header: str
    series: dict[tuple[str, ...], _Series] = field(default_factory=dict)
    text: str | None = None
    """The family's cached text; None when a series changed since it was rendered."""


class CachedExposition:
    """The text format of ``mapping``'s families, then of ``scraped`` (collectors read at
    scrape time), rendered incrementally (see the module docstring). The caller serialises
    ``render`` with the mapping's writers."""

    def __init__(self, mapping: MetricMapping, scraped: Iterable[Collector] = ()) -> None:
        self.mapping = mapping
        self.scraped = list(scraped)
        if mapping.changed is None:
            mapping.changed = set()
        if mapping.removed is None:
            mapping.removed = set()
        self._families: dict[str, _Family] = {}
        self._by_key: dict[SeriesKey, tuple[_Family, _Series]] = {}
        for name in mapping.family_names():
            metric = mapping.metric(name)
            doc = metric._documentation.replace("\\", "\\\\").replace("\n", "\\n")
            base, kind = metric._name, metric._type
            shown = f"{base}_total" if kind == "counter" else base
            header = f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n"
            created = f"# HELP {base}_created {doc}\n# TYPE {base}_created gauge\n"
            self._families[name] = _Family(metric, header, created)
        for key in mapping.series():
            self._format(self._born(key))

    @staticmethod
    def _renderer(
        metric: Any, values: tuple[str, ...], child: Any
    ) -> Callable[[], tuple[str, str]]:
        """What formats one series now: label text built here, once; values read per call."""
        own = dict(zip(metric._labelnames, values, strict=True))
        base, kind = metric._name, metric._type
        labels = label_text(own)
        created = f"{base}_created{labels} "
        fmt = format_value
        # The _created line, formatted once (a Go-style timestamp is the dearest value to
        # format): a child's creation time never moves, as the mapping never resets a child (a
        # reset would also replace the value objects bound here).
        made_line = "" if kind == "gauge" else f"{created}{fmt(child._created)}\n"

        def made() -> str:
            return made_line if client_metrics._use_created else ""

        if kind == "gauge":
            prefix = f"{base}{labels} "
            value = child._value

            def gauge() -> tuple[str, str]:
                return f"{prefix}{fmt(value._value)}\n", ""

            return gauge
        if kind == "counter":
            prefix = f"{base}_total{labels} "
            value = child._value

            def counter() -> tuple[str, str]:
                return f"{prefix}{fmt(value._value)}\n", made()

            return counter
        bucket_prefixes = [
            f"{base}_bucket{label_text({**own, 'le': format_value(bound)})} "
            for bound in child._upper_bounds
        ]
        count_prefix, sum_prefix = f"{base}_count{labels} ", f"{base}_sum{labels} "
        buckets, total = child._buckets, child._sum
        has_sum = child._upper_bounds[0] >= 0

        def histogram() -> tuple[str, str]:
            acc = 0.0
            lines = []
            for prefix, bucket in zip(bucket_prefixes, buckets, strict=True):
                acc += bucket._value
                # A count below a million is what format_value gives, without the call.
                lines.append(f"{prefix}{repr(acc) if acc < 1e6 else fmt(acc)}\n")
            lines.append(f"{count_prefix}{fmt(acc)}\n")
            if has_sum:
                lines.append(f"{sum_prefix}{fmt(total._value)}\n")
            return "".join(lines), made()

        return histogram

    def _born(self, key: SeriesKey) -> tuple[_Family, _Series]:
        """A series new to the cache: its renderer, built once."""
        family = self._families[key[0]]
        series = _Series(self._renderer(family.metric, key[1], self.mapping.child(key)))
        family.series[key[1]] = series
        self._by_key[key] = known = (family, series)
        return known

    @staticmethod
    def _format(known: tuple[_Family, _Series]) -> None:
        """Format a series' lines now; its family's text is stale."""
        family, series = known
        series.main, series.created = series.render()
        family.text = None

    def _removed(self, key: SeriesKey) -> None:
        known = self._by_key.pop(key, None)
        if known is not None:
            family = known[0]
            family.series.pop(key[1], None)
            family.text = None

    def _family_text(self, family: _Family) -> str:
        if family.text is None:
            metric = family.metric
            # The client's own order: its children as they were created (a series removed
            # and born again comes last), as generate_latest walks them.
            order = list(metric._metrics) if metric._labelnames else [()]
            present = [family.series[v] for v in order if v in family.series]
            text = family.header + "".join(s.main for s in present)
            made = "".join(s.created for s in present)
            if made:
                text += family.created_header + made
            family.text = text
        return family.text

    def render(self) -> bytes:
        """The whole exposition as of now."""
        mapping = self.mapping
        assert mapping.changed is not None
        assert mapping.removed is not None
        mapping.fold()
        removed, mapping.removed = mapping.removed, set()
        changed, mapping.changed = mapping.changed, set()
        for key in removed:
            self._removed(key)
        by_key, exists, fmt = self._by_key, mapping.has_series, self._format
        for key in changed:
            known = by_key.get(key)
            if known is None:  # born since the last render (or born and gone again)
                if not exists(key):
                    continue
                known = self._born(key)
            fmt(known)  # a known series not removed above exists
        parts = [self._family_text(f) for f in self._families.values()]
        head = "".join(parts).encode("utf-8")
        if not self.scraped:
            return head
        return head + b"".join(generate_latest(_One(c)) for c in self.scraped)

    def __iter__(self) -> Iterator[str]:
        """The families' names, in the order they are rendered."""
        return iter(self._families)
