"""The JSONL line format: strict JSON, exact round trips, awkward values (SPEC 4)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.leyline import Severity, TelemetryEvent, TelemetryEventType
from esper.nissa import decode_line, encode_event, to_jsonable

# Strings that spell a non-finite float are read back as floats (outside fields the catalogue
# declares as strings), so free text in this round trip avoids exactly those three.
_SPECIAL = {"NaN", "Infinity", "-Infinity"}
text = st.text(max_size=12).filter(lambda s: s not in _SPECIAL)
keys = text.map(lambda s: "k_" + s)
floats64 = st.floats(allow_nan=True, allow_infinity=True)
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _pair(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    return strategy.map(lambda v: (v, v))


leaves = st.one_of(
    _pair(st.none()),
    _pair(st.booleans()),
    _pair(st.integers(-(2**62), 2**62)),
    _pair(floats64),
    _pair(text),
    floats64.map(lambda v: (np.float64(v), v)),
    st.integers(-(2**31), 2**31).map(lambda v: (np.int64(v), v)),
    floats32.map(lambda v: (torch.tensor(v, dtype=torch.float32), v)),
    st.lists(floats32, max_size=4).map(lambda v: (torch.tensor(v, dtype=torch.float32), v)),
    st.lists(st.integers(-1000, 1000), max_size=4).map(lambda v: (np.array(v, dtype=np.int64), v)),
)


def _containers(children: st.SearchStrategy[tuple[Any, Any]]) -> st.SearchStrategy[tuple[Any, Any]]:
    lists = st.lists(children, max_size=4).map(lambda xs: ([a for a, _ in xs], [b for _, b in xs]))
    dicts = st.dictionaries(keys, children, max_size=4).map(
        lambda d: ({k: a for k, (a, _) in d.items()}, {k: b for k, (_, b) in d.items()})
    )
    return st.one_of(lists, dicts)


payloads = st.dictionaries(keys, st.recursive(leaves, _containers, max_leaves=16), max_size=6).map(
    lambda d: ({k: a for k, (a, _) in d.items()}, {k: b for k, (_, b) in d.items()})
)


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and tells ints from floats."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    event_type=st.sampled_from(TelemetryEventType),
    ids=st.tuples(st.none() | text, st.none() | text, st.none() | text),
    epoch=st.none() | st.integers(0, 10**6),
    message=st.text(max_size=30),
    severity=st.sampled_from(Severity),
    timestamp_ns=st.integers(0, 4 * 10**18),
    payload=payloads,
    seq=st.integers(0, 2**40),
)
def test_event_round_trips_exactly_through_a_jsonl_line(
    event_type: TelemetryEventType,
    ids: tuple[str | None, str | None, str | None],
    epoch: int | None,
    message: str,
    severity: Severity,
    timestamp_ns: int,
    payload: tuple[dict[str, Any], dict[str, Any]],
    seq: int,
) -> None:
    data, expected = payload
    event = TelemetryEvent(
        event_type=event_type, seed_id=ids[0], slot_id=ids[1], run_id=ids[2], epoch=epoch,
        message=message, data=data, severity=severity, timestamp_ns=timestamp_ns,
    )  # fmt: skip
    line = encode_event(event, seq)
    assert "\n" not in line
    json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict JSON
    back, back_seq = decode_line(line)
    assert back_seq == seq
    assert (back.event_type, back.seed_id, back.slot_id, back.run_id, back.epoch) == (
        event_type, ids[0], ids[1], ids[2], epoch,
    )  # fmt: skip
    assert (back.message, back.severity, back.timestamp_ns, back.event_id) == (
        message, severity, timestamp_ns, event.event_id,
    )  # fmt: skip
    assert same(back.data, expected)


def test_non_finite_floats_are_written_as_strings() -> None:
    event = TelemetryEvent(
        event_type=TelemetryEventType.GOVERNOR_ROLLBACK,
        data={"loss_at_panic": math.nan, "loss_threshold": math.inf, "x": [-math.inf]},
    )
    obj = json.loads(encode_event(event, 0))
    assert obj["data"] == {"loss_at_panic": "NaN", "loss_threshold": "Infinity", "x": ["-Infinity"]}


def test_catalogue_string_fields_keep_a_literal_nan_string() -> None:
    event = TelemetryEvent(
        event_type=TelemetryEventType.TELEMETRY_WARNING, data={"reason": "NaN", "detail": "x"}
    )
    back, _ = decode_line(encode_event(event, 0))
    assert back.data["reason"] == "NaN"


def test_unserialisable_values_become_their_repr_instead_of_crashing() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    assert to_jsonable({"a": Odd(), 3: {1, 2}, "t": (1, 2)}) == {
        "a": "<odd>", "3": [1, 2], "t": [1, 2],
    }  # fmt: skip
    encode_event(
        TelemetryEvent(event_type=TelemetryEventType.TELEMETRY_WARNING, data={"o": Odd()}), 1
    )


def test_line_has_the_contract_keys_in_order() -> None:
    event = TelemetryEvent(event_type=TelemetryEventType.TRAINING_STARTED, run_id="r1")
    assert list(json.loads(encode_event(event, 7))) == [
        "schema", "seq", "event_id", "event_type", "timestamp", "run_id", "seed_id", "slot_id",
        "epoch", "severity", "message", "data",
    ]  # fmt: skip
    assert json.loads(encode_event(event, 7))["timestamp"].endswith("Z")
