"""A recorded run as Prometheus samples: the record replayed through the live mapping.

``backfill_runs(events)`` splits a record into runs (by run id) and their ranks, replays each
rank's events in timestamp order through its own ``MetricMapping`` (the one the live exporter
uses, so a metric means the same thing live and afterwards) and keeps a sample, at the event's
timestamp, of every series the event changed, plus:

- a sample of every series that exists before the first event (the counters the mapping starts
  at zero) 1 ms before it, so ``increase()`` sees the run's first step as it does live;
- a sample of every series every ``RESTATE_SECONDS`` of the run, as a scrape would take one
  (a query's 5-minute lookback then never finds a gap in a run whose events are sparse);
- a closing sample of every series at the last event of its process (the run's last event,
  unless a rank stopped before the others).

Series carry the labels the shipped scrape job gives a live run (``job="esper-trainer"``,
``run_id``, ``mode``, ``task``, and ``rank``, ``local_rank`` and ``node`` for a rank of a
multi-rank run) and an ``instance`` that names the recording (``recorded:<run_id>``, with
``:rank<R>``). The hub's drop and loss counts, read from the hub when scraped live, come from
the numbers the record carries (each TELEMETRY_WARNING's and the closing TELEMETRY_CLOSED's
``dropped`` and ``lost``), from the first of them on. What the record cannot tell (CUDA memory,
``*_created`` timestamps, which are read when scraped) is left out, never invented.

``detail`` is the live exporter's ``--metrics-detail``: per env by default (the record keeps
every env, and one run's blocks are small), or folded over each rank's envs, as a big job's
live ``/metrics`` served them.

Two samples of one series in the same millisecond keep the later value (the TSDB keeps
milliseconds). A series the mapping removes (a slot that emptied) stops at its last sample:
a block has no staleness markers, so queries still see it for the lookback (5 minutes).

``write_openmetrics`` writes the samples as timestamped OpenMetrics text, the input of
``promtool tsdb create-blocks-from openmetrics``: one family at a time, each series' samples in
time order, ``# EOF`` last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from prometheus_client import CollectorRegistry

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa.prometheus.catalogue import METRICS_BY_NAME, MetricDetail
from esper.nissa.prometheus.exposition import escape, format_value, label_text
from esper.nissa.prometheus.mapping import MetricMapping, SeriesKey
from esper.nissa.record.replay import RunStatus, run_status

JOB = "esper-trainer"
"""The job label of the shipped scrape job (deploy/prometheus/prometheus.yml)."""

START_LABEL = "recorded_start"
"""The label ``--align-start`` adds: the run's real first event (RFC 3339), so the shift that
placed the run elsewhere on the time axis is never hidden."""

_NS_PER_MS = 1_000_000

RESTATE_SECONDS = 60
"""Every series is restated this often while its process runs, as a scrape would restate it:
a query looks back 5 minutes for a series' last sample, so a run whose events are sparse (a
PPO update every 10 minutes) would otherwise show gaps no live run has."""


@dataclass(frozen=True, slots=True)
class SeriesId:
    """One sample series: its OpenMetrics family, type, sample name and labels."""

    family: str
    kind: str
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class BackfilledRun:
    """One run of a record, as samples."""

    run_id: str
    status: RunStatus
    events: int
    first_ns: int
    last_ns: int
    """The run's first and last event, as recorded (before any shift)."""
    shift_ns: int = 0
    """Added to every timestamp (``--align-start``)."""
    ranks: list[int | None] = field(default_factory=list)
    samples: dict[SeriesId, list[tuple[int, float]]] = field(default_factory=dict)
    """series -> [(timestamp in ms, value)] in time order."""
    helps: dict[str, str] = field(default_factory=dict)
    """family -> its help text."""

    @property
    def start_ms(self) -> int:
        """The first sample's time (ms, shifted): 1 ms before the run's first event."""
        return (self.first_ns + self.shift_ns) // _NS_PER_MS - 1

    @property
    def end_ms(self) -> int:
        """The closing samples' time (ms, shifted): the run's last event."""
        return (self.last_ns + self.shift_ns) // _NS_PER_MS

    def counter_value(self, family: str, **labels: str) -> float:
        """The final value of a counter, summed over the series whose labels include
        ``labels`` (0 when there is none)."""
        total = 0.0
        for sid, points in self.samples.items():
            if sid.name == f"{family}_total" and labels.items() <= dict(sid.labels).items():
                total += points[-1][1]
        return total


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _target_labels(run_id: str, rank: int | None, started: TelemetryEvent | None,
                   multi_rank: bool, real_start: str | None) -> dict[str, str]:  # fmt: skip
    """The labels a live scrape of this process through the shipped job would carry."""
    labels = {"job": JOB, "run_id": run_id}
    instance = f"recorded:{run_id}"
    if started is not None:
        labels["mode"] = str(started.data["mode"])
        labels["task"] = str(started.data["task"])
    if multi_rank:
        labels["rank"] = str(rank or 0)
        instance += f":rank{rank or 0}"
        if started is not None:
            labels["local_rank"] = str(started.data["local_rank"])
            labels["node"] = str(started.data["node"])
    labels["instance"] = instance
    if real_start is not None:
        labels[START_LABEL] = real_start
    return labels


ACCOUNTED = {"dropped": "esper_telemetry_events_dropped", "lost": "esper_telemetry_backend_lost"}
"""Payload field of the telemetry's own numbers -> the counter family it restates."""
_ACCOUNT_EVENTS = (TelemetryEventType.TELEMETRY_WARNING, TelemetryEventType.TELEMETRY_CLOSED)


class _RankSamples:
    """One process's series, sampled after every event through its own mapping."""

    def __init__(
        self, run: BackfilledRun, target: dict[str, str], multi_rank: bool, detail: MetricDetail
    ) -> None:
        self.run = run
        self.target = target
        self.mapping = MetricMapping(CollectorRegistry(), multi_rank=multi_rank, detail=detail)
        self.changed: set[SeriesKey] = set()
        self.removed: set[SeriesKey] = set()
        self.mapping.changed, self.mapping.removed = self.changed, self.removed
        self._ids: dict[SeriesKey, list[tuple[SeriesId, Any]]] = {}
        self.account: dict[SeriesId, float] = {}
        """The telemetry's own counters, as the record's numbers last stated them."""

    def _series(self, key: SeriesKey) -> list[tuple[SeriesId, Any]]:
        """(sample series, how to read its value) for each sample of a mapping series."""
        ids = self._ids.get(key)
        if ids is None:
            name, values = key
            metric = self.mapping.metric(name)
            child = self.mapping.child(key)
            own = dict(zip(metric._labelnames, values, strict=True))
            family, kind = metric._name, metric._type
            self.run.helps.setdefault(family, metric._documentation)
            ids = []
            # honor_labels: the series' own labels win over the target's (esper_run_info).
            for sample in child._samples():
                if sample.name == "_created":
                    continue  # the time the exporter created it: unknowable from the record
                labels = {**self.target, **own, **sample.labels}
                sid = SeriesId(family, kind, family + sample.name, tuple(sorted(labels.items())))
                ids.append((sid, child))
            self._ids[key] = ids
        return ids

    def record(self, key: SeriesKey, t_ms: int) -> None:
        ids = self._series(key)
        values = [s.value for s in ids[0][1]._samples() if s.name != "_created"]
        for (sid, _child), value in zip(ids, values, strict=True):
            self._put(sid, t_ms, value)

    def _put(self, sid: SeriesId, t_ms: int, value: float) -> None:
        points = self.run.samples.setdefault(sid, [])
        if points and points[-1][0] >= t_ms:
            points[-1] = (points[-1][0], value)  # the same millisecond: the later value
        else:
            points.append((t_ms, value))

    def note_account(self, event: TelemetryEvent) -> bool:
        """Take the drop and loss counts an account event states; True when it stated any."""
        stated = False
        for field_name, family in ACCOUNTED.items():
            counts = event.data.get(field_name)
            if not isinstance(counts, dict):
                continue
            self.run.helps.setdefault(family, METRICS_BY_NAME[f"{family}_total"].help)
            for backend, n in counts.items():
                labels = tuple(sorted({**self.target, "backend": str(backend)}.items()))
                sid = SeriesId(family, "counter", f"{family}_total", labels)
                # Cumulative counts: a counter never goes down, whatever a record says.
                self.account[sid] = max(self.account.get(sid, 0.0), float(n))
                stated = True
        return stated

    def record_account(self, t_ms: int) -> None:
        for sid, value in self.account.items():
            self._put(sid, t_ms, value)

    def replay(self, events: list[TelemetryEvent], shift_ns: int) -> None:
        mapping = self.mapping
        first_ms = (events[0].timestamp_ns + shift_ns) // _NS_PER_MS
        for key in mapping.series():
            self.record(key, first_ms - 1)
        restate_ms = first_ms + RESTATE_SECONDS * 1000
        for event in events:
            t_ms = (event.timestamp_ns + shift_ns) // _NS_PER_MS
            while restate_ms < t_ms:  # nothing changed since: the state is known exactly
                for key in mapping.series():
                    self.record(key, restate_ms)
                self.record_account(restate_ms)
                restate_ms += RESTATE_SECONDS * 1000
            if event.event_type in _ACCOUNT_EVENTS and self.note_account(event):
                self.record_account(t_ms)
            self.changed.clear()
            self.removed.clear()
            mapping.apply(event)
            mapping.fold()
            for key in self.changed:
                self.record(key, t_ms)
            for key in self.removed:
                self._ids.pop(key, None)
        end_ms = (events[-1].timestamp_ns + shift_ns) // _NS_PER_MS  # this process's last
        for key in mapping.series():
            self.record(key, end_ms)
        self.record_account(end_ms)


def backfill_runs(
    events: Iterable[TelemetryEvent],
    *,
    align_start_ns: int | None = None,
    detail: MetricDetail = MetricDetail.ENV,
) -> list[BackfilledRun]:
    """Every run of a record as samples (see the module docstring), in the order of their
    first events. ``align_start_ns`` places each run's first event at that instant (every rank
    of a run shifted alike) and labels its series with the real start (``START_LABEL``);
    ``detail`` is the exporter's detail level."""
    by_run: dict[str, dict[int | None, list[TelemetryEvent]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for e in events:
        by_run[e.run_id or "unknown"][e.rank].append(e)
    runs = []
    for run_id, ranks in by_run.items():
        every = sorted((e for evs in ranks.values() for e in evs), key=lambda e: e.timestamp_ns)
        first, last = every[0].timestamp_ns, every[-1].timestamp_ns
        shift = 0 if align_start_ns is None else align_start_ns - first
        run = BackfilledRun(run_id, run_status(every), len(every), first, last, shift)
        real_start = None if align_start_ns is None else _rfc3339(first)
        for rank in sorted(ranks, key=lambda r: -1 if r is None else r):
            rank_events = sorted(ranks[rank], key=lambda e: e.timestamp_ns)
            started = next(
                (e for e in rank_events if e.event_type is TelemetryEventType.TRAINING_STARTED),
                None,
            )
            world = int(started.data.get("world_size") or 1) if started is not None else 1
            multi = rank is not None or world > 1
            target = _target_labels(run_id, rank, started, multi, real_start)
            _RankSamples(run, target, multi, detail).replay(rank_events, shift)
            run.ranks.append(rank)
        runs.append(run)
    runs.sort(key=lambda r: r.first_ns)
    return runs


def write_openmetrics(runs: Iterable[BackfilledRun], out: IO[str]) -> int:
    """Write the runs' samples as timestamped OpenMetrics; returns the samples written. The
    text is the same for the same record in every process: families by name, and each
    family's series by sample name and labels (the order they were first written in follows
    set iteration, which string hashing makes differ from process to process)."""
    families: dict[str, list[tuple[SeriesId, list[tuple[int, float]]]]] = defaultdict(list)
    helps: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for run in runs:
        helps.update(run.helps)
        for sid, points in run.samples.items():
            families[sid.family].append((sid, points))
            kinds[sid.family] = sid.kind
    n = 0
    for family in sorted(families):
        out.write(f"# TYPE {family} {kinds[family]}\n")
        if family in helps:
            out.write(f"# HELP {family} {escape(helps[family])}\n")
        for sid, points in sorted(
            families[family], key=lambda pair: (pair[0].name, pair[0].labels)
        ):
            prefix = f"{sid.name}{label_text(dict(sid.labels))} "
            out.writelines(
                f"{prefix}{format_value(v)} {t // 1000}.{t % 1000:03d}\n" for t, v in points
            )
            n += len(points)
    out.write("# EOF\n")
    return n
