"""SanctumAggregator: folds events into a SanctumSnapshot, thread-safely, with bounded memory.

Events arrive on the hub's delivery thread (the aggregator is an OutputBackend) or from a
replayed file; ``get_snapshot()`` returns a deep copy for the UI. Every payload field is
stored at its path in the capture map; on top of that the aggregator keeps the lifecycle
bookkeeping a person needs: seeds reset on germination and cleared when their slot returns to
DORMANT or their host is replaced, counts of rollbacks and anomalies, histories, recent
decisions and the event log (all capped).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import threading
import typing
from typing import Any

from esper.karn.sanctum.capture import CAPTURE
from esper.karn.sanctum.schema import (
    DecisionSnapshot,
    EnvState,
    EventLogEntry,
    SanctumSnapshot,
    SeedState,
)
from esper.leyline import DISCRIMINATORS, TelemetryEvent, TelemetryEventType
from esper.nissa import OutputBackend, register_fork_resource
from esper.nissa.record.replay import RunStatus, RunTracker

ET = TelemetryEventType
_SEGMENT = re.compile(r"^(\w+)(?:\[(.+)\])?$")
_LOGGED = frozenset(
    {
        ET.TRAINING_STARTED, ET.TRAINING_COMPLETED, ET.SEED_GERMINATED, ET.SEED_STAGE_CHANGED,
        ET.SEED_FOSSILIZED, ET.SEED_CULLED, ET.GOVERNOR_ROLLBACK, ET.GRADIENT_ANOMALY,
        ET.PLATEAU_DETECTED, ET.CHECKPOINT_SAVED, ET.CHECKPOINT_LOADED, ET.TELEMETRY_WARNING,
        ET.TELEMETRY_LEVEL_CHANGED, ET.TELEMETRY_CLOSED,
    }
)  # fmt: skip
_LOG_DETAILS = (
    "reason", "auto_culled", "improvement", "blueprint_id", "epochs_total", "counterfactual",
    "from_stage", "to_stage", "params", "params_added", "kind", "scope", "value", "status",
    "to_level", "until_epoch",
)  # fmt: skip
_POLICY_ANOMALIES_CAP = 20


def _new_child(name: str, key: Any) -> Any:
    if name == "envs":
        return EnvState(env_id=int(key))
    if name == "seeds":
        return SeedState(slot_id=str(key))
    return {}


Segment = tuple[str, str | None]


@functools.cache
def _compile(path: str) -> tuple[Segment, ...]:
    """``a.b[{env_id}].c`` -> (("a", None), ("b", "{env_id}"), ("c", None)); parsed once."""
    out = []
    for segment in path.split("."):
        m = _SEGMENT.match(segment)
        if m is None:
            raise ValueError(f"bad capture path segment {segment!r} in {path!r}")
        out.append((m.group(1), m.group(2)))
    return tuple(out)


def _key(name: str, index: str, data: dict[str, Any]) -> Any:
    key: Any = data[index[1:-1]] if index.startswith("{") else index
    return int(key) if name == "envs" else key


def resolve(root: Any, path: str, data: dict[str, Any], *, create: bool = False) -> Any:
    """Walk ``path`` (see the capture module) from ``root``; with ``create``, missing envs,
    seeds, dicts and decision records are made on the way. Returns (container, name or key,
    "index" when the last segment indexes a dict, else None)."""
    obj = root
    segments = _compile(path)
    last = len(segments) - 1
    for i, (name, index) in enumerate(segments):
        if i == last and index is None:
            return obj, name, None
        child = obj[name] if isinstance(obj, dict) else getattr(obj, name)
        if child is None and create:
            child = DecisionSnapshot() if name == "last_decision" else {}
            setattr(obj, name, child)
        if index is None:
            obj = child
            continue
        key = _key(name, index, data)
        if i == last:
            return child, key, "index"
        if key not in child:
            if not create:
                raise KeyError(f"{path}: no {name}[{key}]")
            child[key] = _new_child(name, key)
        obj = child[key]
    raise AssertionError(path)


class SchemaError(TypeError):
    """A capture path names an attribute the snapshot schema does not have."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (directly, or as the ``X`` of ``X | None``)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def check_capture_paths(root: type = SanctumSnapshot) -> None:
    """Raise SchemaError unless every capture path walks through real schema attributes.

    Run at import: a payload field whose path names a missing attribute would otherwise be
    dropped silently on every event. A path may go on below a plain ``dict`` (its keys are
    data, not schema)."""
    for (event_type, variant), paths in CAPTURE.items():
        for field_name, path in paths.items():
            if path is None:
                continue
            cls: type | None = root
            for name, index in _compile(path):
                if cls is None:
                    break  # inside a plain dict
                hints = _field_types(cls)
                if name not in hints:
                    raise SchemaError(
                        f"{event_type.name}{'' if variant is None else ':' + variant}.{field_name}"
                        f" -> {path}: {cls.__name__} has no attribute {name!r}"
                    )
                tp = hints[name]
                if index is not None:  # dict[key, value]: step into the value type
                    args = typing.get_args(tp)
                    tp = args[1] if len(args) == 2 else Any
                cls = _dataclass_in(tp)


check_capture_paths()


def _assign(root: Any, path: str, value: Any, data: dict[str, Any]) -> None:
    if path.endswith("[*]"):
        base = path[: -len("[*]")]
        for key, record in value.items():
            for item, item_value in record.items():
                _assign(root, f"{base}[{key}].{item}", item_value, data)
        return
    parent, name, kind = resolve(root, path, data, create=True)
    if kind == "index" or isinstance(parent, dict):
        parent[name] = value
    else:
        setattr(parent, name, value)


_RUN_WIDE = frozenset({ET.TRAINING_STARTED, ET.TRAINING_COMPLETED})
"""Events every rank of a multi-rank run sends, describing the run; Sanctum shows rank 0's
(``esper telemetry summarize`` reports every rank's)."""


class SanctumAggregator(OutputBackend):
    """Folds events into a snapshot (see the module docstring)."""

    deliver_in_forked_child = False
    """Its UI runs in the parent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = SanctumSnapshot()
        self._runs = RunTracker()
        """How each run (each rank) ended, for ``status``."""
        register_fork_resource(self)

    def _reinit_after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "sanctum"

    def emit(self, event: TelemetryEvent) -> None:
        self.process_event(event)

    def process_event(self, event: TelemetryEvent) -> None:
        """Fold one event in. Never raises for an unknown or malformed event."""
        with self._lock:
            snap = self._snapshot
            snap.events_seen += 1
            snap.last_event_ns = max(snap.last_event_ns, event.timestamp_ns)
            self._runs.observe(event)
            data = event.data
            disc = DISCRIMINATORS.get(event.event_type)
            key = (event.event_type, None if disc is None else data.get(disc))
            paths = CAPTURE.get(key)
            if paths is None:
                return
            if event.rank and event.event_type in _RUN_WIDE:
                return  # a multi-rank run's configuration and ending are rank 0's
            self._before(snap, event)
            for name, value in data.items():
                path = paths.get(name)
                if path is None:
                    continue
                try:
                    _assign(snap, path, value, data)
                except (KeyError, TypeError, ValueError):
                    # A malformed payload (an env id that is not a number, a missing key)
                    # loses that field, never the aggregator, and is counted. The schema
                    # itself is checked against the capture map at import.
                    snap.fields_dropped += 1
            self._after(snap, event)

    # -- bookkeeping around the generic capture ---------------------------------------------

    def _before(self, snap: SanctumSnapshot, e: TelemetryEvent) -> None:
        d = e.data
        if e.event_type is ET.SEED_GERMINATED and "env_id" in d and "slot_id" in d:
            env = snap.envs.setdefault(int(d["env_id"]), EnvState(env_id=int(d["env_id"])))
            env.seeds[str(d["slot_id"])] = SeedState(slot_id=str(d["slot_id"]), stage="GERMINATED")
        elif e.event_type is ET.EPOCH_COMPLETED and d.get("scope") == "env" and "env_id" in d:
            known = snap.envs.get(int(d["env_id"]))
            if known is not None:
                for slot_id in [s for s in known.seeds if s not in d.get("seeds", {})]:
                    del known.seeds[slot_id]  # the host was replaced: those seeds are gone

    def _after(self, snap: SanctumSnapshot, e: TelemetryEvent) -> None:
        d = e.data
        env = snap.envs.get(int(d["env_id"])) if isinstance(d.get("env_id"), int) else None
        handler = _AFTER.get(e.event_type)
        if handler is not None:
            handler(snap, env, d)
        if e.event_type in _LOGGED:
            snap.event_log.append(
                EventLogEntry(
                    e.timestamp_ns, e.event_type.name, e.message, env_id=d.get("env_id"),
                    slot_id=e.slot_id or d.get("slot_id"), seed_id=e.seed_id,
                    severity=str(e.severity),
                    details={k: d[k] for k in _LOG_DETAILS if k in d},
                )
            )  # fmt: skip

    # -- reading -----------------------------------------------------------------------------

    def status(self) -> RunStatus | None:
        """How the run ended so far, over all its ranks (None before any run event)."""
        with self._lock:
            return self._runs.status() if self._runs.saw_a_run else None

    def get_snapshot(self) -> SanctumSnapshot:
        """A deep copy of the current snapshot: safe to read while events keep arriving."""
        with self._lock:
            return copy.deepcopy(self._snapshot)


Data = dict[str, Any]


def _started(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    snap.reward_mode = str(d.get("reward_mode", ""))
    snap.task_name = str(d.get("task", ""))


def _epoch(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    if env is not None and d.get("scope") == "env":
        env.accuracy_history.append(float(d.get("val_accuracy", 0.0)))
        env.grad_norm_history.append(float(d.get("host_grad_norm", 0.0)))


def _ppo(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    snap.tamiyo.updates += 1
    snap.tamiyo.policy_loss_history.append(float(d.get("policy_loss", 0.0)))
    snap.tamiyo.entropy_history.append(float(d.get("entropy", 0.0)))
    snap.tamiyo.kl_history.append(float(d.get("kl_divergence", 0.0)))


def _batch(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    snap.tamiyo.reward_history.append(float(d.get("avg_reward", 0.0)))


def _stage(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    seed = None if env is None else env.seeds.get(str(d.get("slot_id")))
    if env is None or seed is None:
        return
    seed.stage = str(d.get("to_stage", seed.stage))
    if seed.stage == "DORMANT":
        del env.seeds[seed.slot_id]


def _outcome(outcome: str) -> Any:
    def handle(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
        seed = None if env is None else env.seeds.get(str(d.get("slot_id")))
        if seed is not None:
            seed.outcome = outcome

    return handle


def _rollback(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    if env is not None:
        env.rollbacks += 1


def _anomaly(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    if env is not None:
        env.anomalies += 1
        env.last_anomaly = dict(d)
    elif d.get("scope") == "policy":
        snap.tamiyo.policy_anomalies.append(dict(d))
        del snap.tamiyo.policy_anomalies[:-_POLICY_ANOMALIES_CAP]


def _warning(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    snap.telemetry_warnings.append(dict(d))


def _level_changed(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    escalated = d.get("to_level") == "debug"
    if d.get("env_id") is None:  # a window over every env
        snap.escalated_run = escalated
        for each in snap.envs.values():
            each.escalations += escalated
    elif env is not None:
        env.escalations += escalated and not env.escalated
        env.escalated = escalated


def _snapshot(snap: SanctumSnapshot, env: EnvState | None, d: Data) -> None:
    if d.get("kind") == "last_action" and env is not None and env.last_decision is not None:
        snap.recent_decisions.append(copy.copy(env.last_decision))


_AFTER = {
    ET.TRAINING_STARTED: _started,
    ET.EPOCH_COMPLETED: _epoch,
    ET.PPO_UPDATE_COMPLETED: _ppo,
    ET.SEED_STAGE_CHANGED: _stage,
    ET.SEED_FOSSILIZED: _outcome("fossilized"),
    ET.SEED_CULLED: _outcome("culled"),
    ET.GOVERNOR_ROLLBACK: _rollback,
    ET.GRADIENT_ANOMALY: _anomaly,
    ET.TELEMETRY_WARNING: _warning,
    ET.TELEMETRY_LEVEL_CHANGED: _level_changed,
    ET.BATCH_EPOCH_COMPLETED: _batch,
    ET.ANALYTICS_SNAPSHOT: _snapshot,
}
