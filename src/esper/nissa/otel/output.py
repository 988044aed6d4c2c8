"""OTelOutput: the life of every seed as an OpenTelemetry trace, exported over OTLP/HTTP.

One trace per run::

    esper.run                          TRAINING_STARTED .. TRAINING_COMPLETED
     +-- esper.episode (per env)       batch start .. batch end (aggregate EPOCH_COMPLETED)
     |    +-- esper.seed               SEED_GERMINATED .. SEED_FOSSILIZED / SEED_CULLED
     |         +-- esper.seed.stage    one span per stage; gate evaluations are span events
     +-- esper.ppo.update              PPO_UPDATE_COMPLETED (its update_time_ms before it)

The trace id is derived from the run id (``run_trace_ids``), and so is the run span's id, so
every rank of a multi-rank run joins the one trace: rank 0 exports the run span, and every
rank hangs its episode spans (and their seeds) under it, by id; the resource names the rank
(``esper.rank``, ``esper.local_rank``, ``esper.world_size``, ``esper.node_rank``,
``esper.restart_count``, ``host.name``).

A stage gets its own child span, so a seed that changes stage hundreds of times loses nothing to
a per-span event limit, and a long-lived seed shows up stage by stage while it lives.
GOVERNOR_ROLLBACK marks the env's episode span with an error status and an event. Start and
end times come from the events' timestamps, never from when this backend saw them. Spans
still open at close are ended then, with ``esper.seed.outcome = unfinished``.

Export is batched on the SDK's own thread (a dead collector never reaches the training
thread); export timeouts and shutdown are bounded; spans that were ended but never exported
are counted (``lost``) and reported.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
)

from esper.leyline import RankInfo, TelemetryEvent, TelemetryEventType
from esper.nissa.hub.backend import OutputBackend
from esper.nissa.hub.signals import signals_blocked, start_daemon_thread
from esper.nissa.otel.sdk import (
    _CountingExporter,
    _RunIds,
    otlp_exporter,
)

ET = TelemetryEventType
DEFAULT_SERVICE_NAME = "esper-trainer"
SHUTDOWN_SECONDS = 5.0
"""At most this long to flush and shut down the exporter at close."""

_log = logging.getLogger("esper.nissa.otel")
# The SDK logs a warning for every span it drops from a full queue; we count them instead.
logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)


@dataclass(slots=True)
class _Seed:
    span: Span
    stage_span: Span
    env_id: int


@dataclass(slots=True)
class _Runtime:
    run: Span | None = None
    batch_start_ns: int = 0
    max_epochs: int = 0
    episodes: dict[int, Span] = field(default_factory=dict)
    seeds: dict[str, _Seed] = field(default_factory=dict)


class OTelOutput(OutputBackend):
    """Seed-lifecycle traces (see the module docstring).

    ``exporter`` defaults to OTLP/HTTP at ``endpoint`` (or the OTEL_* variables); pass an
    in-memory exporter in tests. ``batch=False`` exports on the calling thread (tests only: a
    simple processor against a dead collector blocks for its whole timeout).
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        exporter: SpanExporter | None = None,
        service_name: str | None = None,
        run_id: str | None = None,
        rank: RankInfo | None = None,
        batch: bool = True,
        max_queue_size: int = 4096,
        recorded: bool = False,
    ) -> None:
        """``run_id`` fixes the trace id (see ``run_trace_ids``); ``rank``, for a rank of a
        multi-rank run: a rank other than 0 exports no run span of its own, its spans join
        rank 0's. ``recorded``: the events come from a record (``esper telemetry replay``),
        so spans still open at close end at the last event, not at the time of the replay."""
        self._recorded = recorded
        self._counting = _CountingExporter(exporter or otlp_exporter(endpoint))
        attributes: dict[str, Any] = {
            "service.name": os.environ.get("OTEL_SERVICE_NAME")
            or service_name
            or DEFAULT_SERVICE_NAME,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        }
        if run_id:
            attributes["esper.run.id"] = run_id
        if rank is not None:
            attributes.update(
                {
                    "esper.rank": rank.rank,
                    "esper.local_rank": rank.local_rank,
                    "esper.world_size": rank.world_size,
                    "esper.node_rank": rank.node_rank,
                    "esper.restart_count": rank.restart_count,
                    "host.name": rank.node,
                }
            )
        self.resource = Resource.create(attributes)
        self._ids = _RunIds(run_id) if run_id else None
        self._key_prefix = "" if rank is None else f"rank{rank.rank}/"
        self._key_counts: dict[str, int] = {}
        self._last_ns: int | None = None
        self._follower = rank is not None and rank.rank != 0
        """A rank other than 0: the run span is rank 0's, referred to by id."""
        self.provider = TracerProvider(
            resource=self.resource, id_generator=self._ids or RandomIdGenerator()
        )
        if batch:
            with signals_blocked():  # the SDK's worker thread inherits the mask
                processor: Any = BatchSpanProcessor(
                    self._counting, max_queue_size=max_queue_size, schedule_delay_millis=1000
                )
        else:
            processor = SimpleSpanProcessor(self._counting)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("esper.nissa")
        self._state = _Runtime()
        self.spans_ended = 0
        self._closed = False
        self._final_lost: int | None = None
        self._handlers = {
            ET.TRAINING_STARTED: self._on_started,
            ET.TRAINING_COMPLETED: self._on_completed,
            ET.SEED_GERMINATED: self._on_germinated,
            ET.SEED_STAGE_CHANGED: self._on_stage_changed,
            ET.SEED_GATE_EVALUATED: self._on_gate,
            ET.SEED_FOSSILIZED: self._on_fossilized,
            ET.SEED_CULLED: self._on_culled,
            ET.PPO_UPDATE_COMPLETED: self._on_ppo_update,
            ET.GOVERNOR_ROLLBACK: self._on_rollback,
            ET.EPOCH_COMPLETED: self._on_epoch,
        }

    deliver_in_forked_child = False
    """A forked child must not end (and export again) the parent's open spans."""

    @property
    def name(self) -> str:
        return "otel"

    @property
    def lost(self) -> int:
        """Spans that will never reach the collector; only ever goes up.

        While the run goes on: spans whose export failed. From close on: every span ended
        but not exported (failed exports, queue overflow, the shutdown deadline), frozen then.
        """
        if self._final_lost is not None:
            return self._final_lost
        return self._counting.failed

    @property
    def exported(self) -> int:
        return self._counting.exported

    # -- span helpers ----------------------------------------------------------------------

    def _end(self, span: Span, end_ns: int) -> None:
        if span.is_recording():  # another rank's run span, referred to by id, is not ours
            span.end(end_time=end_ns)
            self.spans_ended += 1

    def _start(
        self,
        name: str,
        start_ns: int,
        parent: Span | None,
        attributes: dict[str, Any],
        key: str | None = None,
    ) -> Span:
        """Start a span; ``key`` (what it is, e.g. ``seed/<id>``) derives its id from the run
        and how many spans of that key this process started before it."""
        if key is not None and self._ids is not None:
            key = self._key_prefix + key
            n = self._key_counts.get(key, 0)
            self._key_counts[key] = n + 1
            self._ids.claim(f"{key}#{n}")
        context = None if parent is None else trace.set_span_in_context(parent)
        return self.tracer.start_span(
            name, context=context, start_time=start_ns, attributes=attributes
        )

    def _run_span(self, e: TelemetryEvent) -> Span:
        """The run span; opened implicitly if events arrive without TRAINING_STARTED."""
        st = self._state
        if st.run is None:
            if self._follower and self._ids is not None:
                st.run = NonRecordingSpan(
                    SpanContext(
                        self._ids.trace_id,
                        self._ids.run_span_id,
                        is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    )
                )
            else:
                if self._ids is not None:
                    self._ids.claim_run()
                st.run = self._start(
                    "esper.run", e.timestamp_ns, None, {"esper.run.id": e.run_id or ""}
                )
            st.batch_start_ns = e.timestamp_ns
        return st.run

    def _episode(self, env_id: int, e: TelemetryEvent) -> Span:
        st = self._state
        span = st.episodes.get(env_id)
        if span is None:
            parent = self._run_span(e)
            span = self._start(
                "esper.episode",
                st.batch_start_ns or e.timestamp_ns,
                parent,
                {"esper.run.id": e.run_id or "", "esper.env.id": env_id},
                key=f"episode/{env_id}",
            )
            st.episodes[env_id] = span
        return span

    def _end_seed(self, seed_id: str, end_ns: int, outcome: str, **attrs: Any) -> None:
        seed = self._state.seeds.pop(seed_id, None)
        if seed is None:
            return
        self._end(seed.stage_span, end_ns)
        seed.span.set_attribute("esper.seed.outcome", outcome)
        for k, v in attrs.items():
            if v is not None:
                seed.span.set_attribute(k, v)
        self._end(seed.span, end_ns)

    def _end_batch(self, end_ns: int) -> None:
        st = self._state
        for seed_id, seed in list(st.seeds.items()):
            if seed.env_id in st.episodes:
                self._end_seed(seed_id, end_ns, "unfinished")
        for span in st.episodes.values():
            self._end(span, end_ns)
        st.episodes.clear()
        st.batch_start_ns = end_ns

    # -- OutputBackend ---------------------------------------------------------------------

    def emit(self, event: TelemetryEvent) -> None:
        if self._closed:
            return
        self._last_ns = event.timestamp_ns
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(event)

    def close(self, timeout: float | None = None) -> None:
        """End every open span (outcome ``unfinished``) and export, waiting at most
        ``SHUTDOWN_SECONDS`` (or ``timeout``, if shorter)."""
        if self._closed:
            return
        self._closed = True
        now = self._last_ns if self._recorded and self._last_ns is not None else time.time_ns()
        st = self._state
        for seed_id in list(st.seeds):
            self._end_seed(seed_id, now, "unfinished")
        for span in st.episodes.values():
            self._end(span, now)
        st.episodes.clear()
        if st.run is not None:
            st.run.set_attribute("esper.run.outcome", "unfinished")
            self._end(st.run, now)
            st.run = None
        # Shutdown flushes the queue through the exporter; never wait longer than the budget.
        done = threading.Event()

        def shutdown() -> None:
            try:
                self.provider.shutdown()
            finally:
                done.set()

        start_daemon_thread(shutdown, "esper-otel-shutdown")
        wait = SHUTDOWN_SECONDS if timeout is None else min(SHUTDOWN_SECONDS, timeout)
        finished = done.wait(wait)
        # From here on the count is final (an export still in flight can only lower the real
        # loss, never raise it, so the counter never has to go down).
        self._final_lost = max(self._counting.failed, self.spans_ended - self._counting.exported)
        if not finished:
            _log.warning("OTLP export did not finish within %.1f s; %d spans not exported",
                         wait, self._final_lost)  # fmt: skip

    # -- handlers --------------------------------------------------------------------------

    def _on_started(self, e: TelemetryEvent) -> None:
        st = self._state
        d = e.data
        st.max_epochs = int(d["max_epochs"])
        run = self._run_span(e)
        run.set_attributes(
            {
                "esper.run.id": str(d["run_id"]),
                "esper.mode": str(d["mode"]),
                "esper.task": str(d["task"]),
                "esper.n_envs": int(d["n_envs"]),
            }
        )

    def _on_completed(self, e: TelemetryEvent) -> None:
        st = self._state
        self._end_batch(e.timestamp_ns)
        run = self._run_span(e)
        status = str(e.data["status"])
        run.set_attribute("esper.run.outcome", status)
        if status != "completed":
            run.set_status(Status(StatusCode.ERROR, f"run {status}"))
        self._end(run, e.timestamp_ns)
        st.run = None

    def _on_epoch(self, e: TelemetryEvent) -> None:
        d = e.data
        if d["scope"] == "aggregate" and d["inner_epoch"] == self._state.max_epochs:
            self._end_batch(e.timestamp_ns)

    def _seed_attrs(self, e: TelemetryEvent) -> dict[str, Any]:
        d = e.data
        return {
            "esper.run.id": e.run_id or "",
            "esper.env.id": int(d["env_id"]),
            "esper.slot.id": str(d["slot_id"]),
            "esper.seed.id": str(d["seed_id"]),
            "esper.blueprint.id": str(d["blueprint_id"]),
        }

    def _on_germinated(self, e: TelemetryEvent) -> None:
        d = e.data
        env_id = int(d["env_id"])
        attrs = self._seed_attrs(e)
        seed_id = str(d["seed_id"])
        episode = self._episode(env_id, e)
        span = self._start("esper.seed", e.timestamp_ns, episode, attrs, key=f"seed/{seed_id}")
        stage = self._start("esper.seed.stage", e.timestamp_ns, span,
                            {**attrs, "esper.stage": "GERMINATED"},
                            key=f"stage/{seed_id}")  # fmt: skip
        self._state.seeds[str(d["seed_id"])] = _Seed(span, stage, env_id)

    def _on_stage_changed(self, e: TelemetryEvent) -> None:
        seed = self._state.seeds.get(str(e.data["seed_id"]))
        if seed is None:
            return  # after the seed's end (embargo, reset): not part of its life span
        self._end(seed.stage_span, e.timestamp_ns)
        seed.stage_span = self._start(
            "esper.seed.stage",
            e.timestamp_ns,
            seed.span,
            {
                **self._seed_attrs(e),
                "esper.stage": str(e.data["to_stage"]),
                "esper.from_stage": str(e.data["from_stage"]),
            },
            key=f"stage/{e.data['seed_id']}",
        )

    def _on_gate(self, e: TelemetryEvent) -> None:
        seed = self._state.seeds.get(str(e.data["seed_id"]))
        if seed is None:
            return
        d = e.data
        seed.stage_span.add_event(
            "esper.gate",
            {
                "esper.gate": str(d["gate"]),
                "esper.gate.passed": bool(d["passed"]),
                "esper.gate.target_stage": str(d["target_stage"]),
                "esper.gate.checks_passed": [str(c) for c in d["checks_passed"]],
                "esper.gate.checks_failed": [str(c) for c in d["checks_failed"]],
            },
            timestamp=e.timestamp_ns,
        )

    def _on_fossilized(self, e: TelemetryEvent) -> None:
        self._end_seed(
            str(e.data["seed_id"]),
            e.timestamp_ns,
            "fossilized",
            **{"esper.seed.improvement": float(e.data["improvement"])},
        )

    def _on_culled(self, e: TelemetryEvent) -> None:
        self._end_seed(
            str(e.data["seed_id"]),
            e.timestamp_ns,
            "culled",
            **{
                "esper.seed.improvement": float(e.data["improvement"]),
                "esper.seed.cull_reason": str(e.data["reason"]),
            },
        )

    def _on_ppo_update(self, e: TelemetryEvent) -> None:
        d = e.data
        start = e.timestamp_ns - int(float(d["update_time_ms"]) * 1e6)
        parent = self._run_span(e)
        span = self._start(
            "esper.ppo.update",
            start,
            parent,
            {
                "esper.run.id": e.run_id or "",
                "esper.ppo.batch": int(d["batch"]),
                "esper.ppo.policy_loss": float(d["policy_loss"]),
                "esper.ppo.value_loss": float(d["value_loss"]),
                "esper.ppo.entropy": float(d["entropy"]),
                "esper.ppo.kl_divergence": float(d["kl_divergence"]),
                "esper.ppo.grad_norm": float(d["grad_norm"]),
            },
            key="ppo",
        )
        self._end(span, e.timestamp_ns)

    def _on_rollback(self, e: TelemetryEvent) -> None:
        d = e.data
        episode = self._episode(int(d["env_id"]), e)
        episode.add_event(
            "esper.governor_rollback",
            {
                "esper.rollback.reason": str(d["reason"]),
                "esper.rollback.loss_at_panic": str(d["loss_at_panic"]),
                "esper.rollback.seeds_culled": int(d["seeds_culled"]),
                "esper.device": str(d["device"]),
            },
            timestamp=e.timestamp_ns,
        )
        episode.set_status(Status(StatusCode.ERROR, f"governor rollback: {d['reason']}"))
