"""The span each marker belongs to: the same ids ``esper telemetry replay --otlp-endpoint``
sends, and the live export sent.

The ids are not recomputed here: the run's events go through the OTel backend's own mapping
(``RecordedTraces``, as a replay does), into an in-memory exporter, and each marker is joined to
the span that covers its moment: its env's ``esper.episode`` span (on its rank), else for the
policy the ``esper.ppo.update`` span, else the run span. Only the span-making events are fed
(the others change no span), which keeps this cheap on a long record.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from esper.karn.report.views import Marker
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.otel import RecordedTraces, run_trace_ids

ET = TelemetryEventType

SPAN_EVENTS = frozenset(
    {
        ET.TRAINING_STARTED,
        ET.TRAINING_COMPLETED,
        ET.SEED_GERMINATED,
        ET.SEED_STAGE_CHANGED,
        ET.SEED_GATE_EVALUATED,
        ET.SEED_FOSSILIZED,
        ET.SEED_CULLED,
        ET.PPO_UPDATE_COMPLETED,
        ET.GOVERNOR_ROLLBACK,
        ET.EPOCH_COMPLETED,
    }
)
"""The events OTelOutput has a handler for: the only ones that open, end or mark a span."""


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


class _Index:
    """Spans by (kind, rank, env), each list sorted by start time."""

    def __init__(self, spans: Sequence[ReadableSpan]) -> None:
        self.by_key: dict[tuple[str, int | None, int | None], list[ReadableSpan]] = {}
        for s in spans:
            attrs = s.attributes or {}
            rank = s.resource.attributes.get("esper.rank")
            env = attrs.get("esper.env.id") if s.name == "esper.episode" else None
            key = (s.name, None if rank is None else int(str(rank)),
                   None if env is None else int(str(env)))  # fmt: skip
            self.by_key.setdefault(key, []).append(s)
        self.starts: dict[tuple[str, int | None, int | None], list[int]] = {}
        for key, found in self.by_key.items():
            found.sort(key=lambda s: s.start_time or 0)
            self.starts[key] = [s.start_time or 0 for s in found]

    def covering(
        self, name: str, rank: int | None, env: int | None, ns: int
    ) -> ReadableSpan | None:
        """The span of ``name`` (on ``rank``, of ``env``) open at ``ns``: spans of one key
        follow each other without overlapping, so only the last one started can cover it."""
        key = (name, rank, env)
        i = bisect.bisect_right(self.starts.get(key, []), ns) - 1
        if i < 0:
            return None
        span = self.by_key[key][i]
        return span if ns <= (span.end_time or 0) else None


def locate_spans(events: Sequence[TelemetryEvent], markers: Sequence[Marker]) -> list[Marker]:
    """``markers`` with the trace id, span id and span each belongs to."""
    if not markers:
        return []
    exporter = InMemorySpanExporter()
    traces = RecordedTraces(exporter=exporter, batch=False)
    for e in events:
        if e.event_type in SPAN_EVENTS:
            traces.emit(e)
    traces.close()
    index = _Index(exporter.get_finished_spans())
    run_id = next((e.run_id for e in events if e.run_id), None)
    out = []
    for m in markers:
        ns = m.ns
        span, what = None, ""
        if m.env is not None:
            span = index.covering("esper.episode", m.rank, m.env, ns)
            what = f"esper.episode env {m.env}"
        else:
            span = index.covering("esper.ppo.update", m.rank, None, ns)
            what = "esper.ppo.update"
        if span is not None and span.context is not None:
            out.append(replace(m, trace_id=_hex(span.context.trace_id, 32),
                               span_id=_hex(span.context.span_id, 16), span=what))  # fmt: skip
        elif run_id:
            trace_id, run_span = run_trace_ids(run_id)
            out.append(replace(m, trace_id=_hex(trace_id, 32), span_id=_hex(run_span, 16),
                               span="esper.run"))  # fmt: skip
        else:
            out.append(m)
    return out
