"""The JSONL line format: one strict-JSON object per event.

Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
and read back as floats (except in fields the catalogue declares as strings); tensors and
numpy values become plain numbers and lists; anything else unserialisable becomes its
``repr`` rather than crashing the writer. Timestamps keep nanoseconds so a round trip is exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from esper.leyline import (
    CATALOGUE,
    DISCRIMINATORS,
    FieldSpec,
    FieldType,
    Severity,
    TelemetryEvent,
    TelemetryEventType,
    recorded_payload_problem,
)

SCHEMA_VERSION = 1
"""Version of the line format; readers refuse lines from a newer schema."""

_NONFINITE_OUT = {math.inf: "Infinity", -math.inf: "-Infinity"}
_NONFINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_out(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else _NONFINITE_OUT[x]


def to_jsonable(obj: Any) -> Any:
    """``obj`` made strict-JSON safe (see module docstring). Never raises."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return _float_out(obj)
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.name
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        try:
            return to_jsonable(obj.tolist())
        except Exception:  # noqa: BLE001 - a broken tolist must not crash the writer
            return repr(obj)
    if isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return _float_out(float(obj))
    if isinstance(obj, datetime):
        return obj.isoformat()
    return repr(obj)


def format_timestamp_ns(ns: int) -> str:
    """ISO 8601 UTC with nanoseconds, e.g. ``2026-11-22T00:06:51.123456789Z``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def parse_timestamp_ns(text: str) -> int:
    """Inverse of :func:`format_timestamp_ns`; also accepts other ISO 8601 UTC forms."""
    if text.endswith("Z") and len(text) == 30 and text[19] == ".":
        whole = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return int(whole.timestamp()) * 1_000_000_000 + int(text[20:29])
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no timezone")
    whole_seconds = int(parsed.replace(microsecond=0).timestamp())
    return whole_seconds * 1_000_000_000 + parsed.microsecond * 1000


def encode_line(event: TelemetryEvent, seq: int) -> bytes:
    """One JSONL line (with its newline) for ``event``, as the UTF-8 bytes a file holds.

    A string that is not valid Unicode (a path with a byte that is not UTF-8 reaches Python as a
    lone surrogate) cannot be written as UTF-8; that line alone is written with every
    non-ASCII character escaped (``\\udcff``), which is valid JSON and reads back as the same
    string, so ``os.fsencode`` gives back the original bytes."""
    try:
        return (encode_event(event, seq) + "\n").encode()
    except UnicodeEncodeError:
        return (encode_event(event, seq, ensure_ascii=True) + "\n").encode("ascii")


def encode_event(event: TelemetryEvent, seq: int, *, ensure_ascii: bool = False) -> str:
    """One JSONL line (without the newline) for ``event``, numbered ``seq``."""
    obj = {
        "schema": SCHEMA_VERSION,
        "seq": seq,
        "event_id": event.event_id,
        "event_type": event.event_type.name,
        "timestamp": format_timestamp_ns(event.timestamp_ns),
        "run_id": event.run_id,
        "seed_id": event.seed_id,
        "slot_id": event.slot_id,
        "epoch": event.epoch,
        "severity": str(event.severity),
        "message": event.message,
        "data": to_jsonable(event.data),
    }
    if event.rank is not None:
        obj["rank"] = event.rank
    return json.dumps(obj, allow_nan=False, ensure_ascii=ensure_ascii, separators=(",", ":"))


def _revive(value: Any, spec: FieldSpec | None) -> Any:
    if spec is not None and spec.type is FieldType.STR:
        return value
    if type(value) is str:
        return _NONFINITE_IN.get(value, value)
    if type(value) is list:
        return [_revive(v, None) for v in value]
    if type(value) is dict:
        if spec is not None and spec.item_fields:
            items = {f.name: f for f in spec.item_fields}
            return {
                k: {n: _revive(v, items.get(n)) for n, v in rec.items()}
                if type(rec) is dict
                else _revive(rec, None)
                for k, rec in value.items()
            }
        return {k: _revive(v, None) for k, v in value.items()}
    return value


def _revive_data(event_type: TelemetryEventType, data: dict[str, Any]) -> dict[str, Any]:
    disc = DISCRIMINATORS.get(event_type)
    spec = CATALOGUE.get((event_type, None if disc is None else data.get(disc)))
    fields = {} if spec is None else {f.name: f for f in spec.fields}
    return {k: _revive(v, fields.get(k)) for k, v in data.items()}


def _reject_constant(token: str) -> Any:
    raise ValueError(
        f"non-standard JSON token {token} (this format writes non-finite floats as strings)"
    )


def decode_line(line: str, *, strict: bool = False) -> tuple[TelemetryEvent, int]:
    """Parse one JSONL line into (event, seq). Raises ValueError saying what is wrong.

    ``strict`` also rejects the non-standard tokens NaN, Infinity and -Infinity, which
    Python's json reads by default but no strict JSON reader accepts.
    """
    try:
        obj = json.loads(line, parse_constant=_reject_constant) if strict else json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ValueError(f"unsupported schema {schema!r} (this reader knows {SCHEMA_VERSION})")
    try:
        event_type = TelemetryEventType[obj["event_type"]]
        data = obj["data"]
        if not isinstance(data, dict):
            raise ValueError(f"'data' must be an object, got {type(data).__name__}")
        event = TelemetryEvent(
            event_type=event_type,
            seed_id=obj["seed_id"],
            slot_id=obj["slot_id"],
            epoch=obj["epoch"],
            message=obj["message"],
            data=_revive_data(event_type, data),
            severity=Severity(obj["severity"]),
            timestamp_ns=parse_timestamp_ns(obj["timestamp"]),
            event_id=obj["event_id"],
            run_id=obj["run_id"],
            rank=obj.get("rank"),
        )
        seq = obj["seq"]
    except KeyError as exc:
        raise ValueError(f"missing key or unknown name {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    _check_envelope(event, seq)
    problem = recorded_payload_problem(event_type, event.data)
    if problem is not None:
        raise ValueError(problem)
    for name, (lo, hi) in _SANE_RANGES.items():
        value = event.data.get(name)
        if value is not None and not lo <= value <= hi:
            raise ValueError(f"field data.{name} is {value!r}, outside {lo}..{hi}")
    return event, seq


MAX_RANKS = 1 << 16
"""The most ranks a record may name (torchrun jobs are far smaller): a reader sizes its per-rank
state by what the record says, so a corrupt ``world_size`` must not ask for a billion."""
MAX_ENVS = 1 << 20
_SANE_RANGES: dict[str, tuple[int, int]] = {
    "world_size": (1, MAX_RANKS),
    "rank": (0, MAX_RANKS - 1),
    "local_rank": (0, MAX_RANKS - 1),
    "env_id": (0, MAX_ENVS - 1),
    "n_envs": (0, MAX_ENVS),
}
"""Payload fields the readers size or index by, with the values a record may hold."""
_EARLIEST_NS = 0
_LATEST_NS = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000
_OPTIONAL_STR = ("seed_id", "slot_id", "run_id")


def _check_envelope(event: TelemetryEvent, seq: Any) -> None:
    """Every envelope field of a line read back has its type and a sane value (ValueError
    naming the field otherwise)."""
    if type(seq) is not int or seq < 0:
        raise ValueError(f"field seq must be a non-negative integer, got {seq!r}")
    for name in _OPTIONAL_STR:
        value = getattr(event, name)
        if value is not None and type(value) is not str:
            raise ValueError(f"field {name} must be a string or null, got {value!r}")
    if type(event.event_id) is not str:
        raise ValueError(f"field event_id must be a string, got {event.event_id!r}")
    if type(event.message) is not str:
        raise ValueError(f"field message must be a string, got {event.message!r}")
    epoch = event.epoch
    if epoch is not None and (type(epoch) is not int or not 0 <= epoch < MAX_ENVS * 1024):
        raise ValueError(f"field epoch must be a non-negative integer, got {epoch!r}")
    rank = event.rank
    if rank is not None and (type(rank) is not int or not 0 <= rank < MAX_RANKS):
        raise ValueError(f"field rank must be an integer in 0..{MAX_RANKS - 1}, got {rank!r}")
    if not _EARLIEST_NS <= event.timestamp_ns < _LATEST_NS:
        when = datetime.fromtimestamp(event.timestamp_ns // 1_000_000_000, UTC).year
        raise ValueError(f"field timestamp is in the year {when}, not between 1970 and 2199")
