"""A recorded run's traces, sent again: one OTelOutput per process of the record, as it had live
(``esper telemetry replay --otlp-endpoint``)."""

from __future__ import annotations

import time
from typing import Any

from esper.leyline import RankInfo, TelemetryEvent, TelemetryEventType
from esper.nissa.hub.backend import OutputBackend
from esper.nissa.otel.output import OTelOutput

ET = TelemetryEventType


class RecordedTraces(OutputBackend):
    """A recorded run's traces, sent again (``esper telemetry replay --otlp-endpoint``).

    Each process of the record (each run id and rank) gets an ``OTelOutput`` of its own, as it
    had live: the run's trace id, the span ids derived from the run, the rank's resource (from
    its TRAINING_STARTED), and the recorded times; so the spans equal the live export's, and a
    trace store sees one trace per run however often it is sent.
    """

    deliver_in_forked_child = False

    def __init__(self, endpoint: str | None = None, **options: Any) -> None:
        self._endpoint = endpoint
        self._options = options
        self._outputs: dict[tuple[str | None, int | None], OTelOutput] = {}

    @property
    def name(self) -> str:
        return "otel"

    def _output(self, e: TelemetryEvent) -> OTelOutput:
        key = (e.run_id, e.rank)
        out = self._outputs.get(key)
        if out is None:
            rank = None
            if e.rank is not None:
                d = e.data if e.event_type is ET.TRAINING_STARTED else {}
                rank = RankInfo(
                    rank=e.rank,
                    local_rank=int(d.get("local_rank", 0)),
                    world_size=int(d.get("world_size", 1)),
                    node_rank=int(d.get("node_rank", 0)),
                    node=str(d.get("node", "")),
                    restart_count=int(d.get("restart_count", 0)),
                )
            out = OTelOutput(endpoint=self._endpoint, run_id=e.run_id, rank=rank,
                             recorded=True, **self._options)  # fmt: skip
            self._outputs[key] = out
        return out

    def emit(self, event: TelemetryEvent) -> None:
        self._output(event).emit(event)

    @property
    def lost(self) -> int:
        return sum(o.lost for o in self._outputs.values())

    @property
    def exported(self) -> int:
        return sum(o.exported for o in self._outputs.values())

    def close(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for out in self._outputs.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.close(timeout=left)
