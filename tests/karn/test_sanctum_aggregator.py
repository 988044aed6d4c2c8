"""SanctumAggregator: 100% capture of the catalogue, thread safety, bounded memory."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from esper.karn.sanctum import CAPTURE, SanctumAggregator, aggregator, resolve
from esper.leyline import (
    CATALOGUE,
    DISCRIMINATORS,
    FieldSpec,
    FieldType,
    TelemetryEvent,
    TelemetryEventType,
    make_event,
)

ET = TelemetryEventType


class Sentinels:
    """A distinct, type-correct value per field (bools: True, which no default holds)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, f: FieldSpec) -> Any:
        self.n += 1
        n = self.n
        if f.allowed:  # a closed set: its last value (no default holds it either)
            return f.allowed[-1]
        return {
            FieldType.FLOAT: 1000.25 + n, FieldType.INT: 7000 + n, FieldType.BOOL: True,
            FieldType.STR: f"sentinel-{n}", FieldType.LIST: [f"list-{n}"],
            FieldType.DICT: {f"key-{n}": n},
        }[f.type]  # fmt: skip


def _sentinel_event(key: tuple[TelemetryEventType, str | None], make: Sentinels) -> TelemetryEvent:
    spec = CATALOGUE[key]
    data: dict[str, Any] = {}
    for f in spec.fields:
        if f.item_fields:
            data[f.name] = {"slot-x": {i.name: make(i) for i in f.item_fields}}
        else:
            data[f.name] = make(f)
    if key[1] is not None:
        data[DISCRIMINATORS[key[0]]] = key[1]
    return make_event(key[0], data)


def _read(snapshot: Any, path: str, data: dict[str, Any]) -> Any:
    parent, name, kind = resolve(snapshot, path, data)
    if kind == "index" or isinstance(parent, dict):
        return parent[name]
    return getattr(parent, name)


@pytest.mark.parametrize("key", list(CATALOGUE), ids=lambda k: f"{k[0].name}:{k[1]}")
def test_every_catalogue_field_is_captured_at_its_declared_path(
    key: tuple[TelemetryEventType, str | None],
) -> None:
    make = Sentinels()
    event = _sentinel_event(key, make)
    agg = SanctumAggregator()
    agg.process_event(event)
    snap = agg.get_snapshot()
    paths = CAPTURE[key]
    spec = CATALOGUE[key]
    assert {n for n in paths if "[*]" not in n} == {f.name for f in spec.fields}
    for f in spec.fields:
        path = paths[f.name]
        if path is None:
            assert f.name == DISCRIMINATORS[key[0]]
            continue
        if f.item_fields:
            for slot, record in event.data[f.name].items():
                for item in f.item_fields:
                    item_path = paths[f"{f.name}[*].{item.name}"]
                    assert item_path is not None
                    concrete = item_path.replace("[*]", f"[{slot}]")
                    assert _read(snap, concrete, event.data) == record[item.name], concrete
            continue
        assert _read(snap, path, event.data) == event.data[f.name], f"{key}: {f.name} -> {path}"


def _seed_event(t: ET, slot: str, seed: str, **extra: Any) -> TelemetryEvent:
    make = Sentinels()
    event = _sentinel_event((t, None), make)
    event.data.update(env_id=0, slot_id=slot, seed_id=seed, **extra)
    return event


def test_seed_lifecycle_is_kept_on_the_seed_and_in_the_event_log() -> None:
    agg = SanctumAggregator()
    agg.process_event(_seed_event(ET.SEED_GERMINATED, "mid", "s1", blueprint_id="norm"))
    agg.process_event(_seed_event(ET.SEED_CULLED, "mid", "s1", reason="no_improvement",
                                  auto_culled=True, improvement=-1.5, epochs_total=7,
                                  blueprint_id="norm"))  # fmt: skip
    snap = agg.get_snapshot()
    seed = snap.envs[0].seeds["mid"]
    assert (seed.seed_id, seed.reason, seed.auto_culled, seed.improvement) == (
        "s1", "no_improvement", True, -1.5,
    )  # fmt: skip
    assert (seed.outcome, seed.blueprint_id, seed.epochs_total) == ("culled", "norm", 7)
    entry = snap.event_log[-1]
    assert entry.event_type == "SEED_CULLED"
    assert entry.details["reason"] == "no_improvement"
    assert entry.details["improvement"] == -1.5
    agg.process_event(_seed_event(ET.SEED_STAGE_CHANGED, "mid", "s1", from_stage="RESETTING",
                                  to_stage="DORMANT"))  # fmt: skip
    assert "mid" not in agg.get_snapshot().envs[0].seeds


def test_snapshots_are_copies() -> None:
    agg = SanctumAggregator()
    agg.process_event(_seed_event(ET.SEED_GERMINATED, "mid", "s1"))
    snap = agg.get_snapshot()
    snap.envs[0].seeds.clear()
    assert "mid" in agg.get_snapshot().envs[0].seeds


@pytest.mark.slow
def test_one_thread_feeds_while_another_takes_snapshots() -> None:
    agg = SanctumAggregator()
    make = Sentinels()
    keys = list(CATALOGUE)
    events = []
    for i in range(100_000):
        e = _sentinel_event(keys[i % len(keys)], make) if i < 2000 else events[i % 2000]
        events.append(e)
    for e in events[:2000]:
        if isinstance(e.data.get("env_id"), int):
            e.data["env_id"] = e.data["env_id"] % 4
    errors: list[BaseException] = []
    done = threading.Event()

    snapshots = 0

    def reader() -> None:
        nonlocal snapshots
        try:
            # Poll like the UI does (every few milliseconds here, 4 Hz there).
            while not done.wait(0.002):
                snap = agg.get_snapshot()
                snapshots += 1
                assert snap.events_seen <= 100_000
                assert len(snap.event_log) <= 500
                assert all(k == env.env_id for k, env in snap.envs.items())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for e in events:
        agg.process_event(e)
    done.set()
    t.join()
    assert errors == []
    assert snapshots > 10
    snap = agg.get_snapshot()
    assert snap.events_seen == 100_000
    assert len(snap.envs) <= 4 + 1


def _rss_bytes() -> int:
    """Current resident memory of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_a_million_events_keep_memory_bounded() -> None:
    agg = SanctumAggregator()
    make = Sentinels()
    base = [_sentinel_event(k, make) for k in CATALOGUE]
    for e in base:
        if isinstance(e.data.get("env_id"), int):
            e.data["env_id"] = 0

    def feed(n: int) -> None:
        for i in range(n):
            agg.process_event(base[i % len(base)])

    feed(100_000)
    gc.collect()
    before = _rss_bytes()
    feed(900_000)
    gc.collect()
    grown = _rss_bytes() - before
    snap = agg.get_snapshot()
    assert snap.events_seen == 1_000_000
    assert len(snap.event_log) == 500
    assert grown < 16 * 1024 * 1024, f"resident memory grew by {grown / 1e6:.1f} MB"


def test_a_capture_path_to_a_missing_attribute_is_an_error_not_silence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aggregator.check_capture_paths()  # the shipped map and schema agree
    broken = {k: dict(v) for k, v in CAPTURE.items()}
    broken[(ET.PPO_UPDATE_COMPLETED, None)]["grad_norm"] = "tamiyo.grad_nrom"
    monkeypatch.setattr(aggregator, "CAPTURE", broken)
    with pytest.raises(aggregator.SchemaError, match=r"grad_norm -> tamiyo.grad_nrom: "
                       r"TamiyoState has no attribute 'grad_nrom'"):  # fmt: skip
        aggregator.check_capture_paths()
    broken[(ET.PPO_UPDATE_COMPLETED, None)]["grad_norm"] = "envs[{env_id}].seedz[*]"
    with pytest.raises(aggregator.SchemaError, match="EnvState has no attribute 'seedz'"):
        aggregator.check_capture_paths()


def test_a_malformed_payload_loses_its_field_and_is_counted() -> None:
    agg = SanctumAggregator()
    bad = TelemetryEvent(ET.GOVERNOR_ROLLBACK, data={"env_id": "not-a-number", "reason": "x"})
    agg.process_event(bad)
    snap = agg.get_snapshot()
    assert snap.fields_dropped == 2
    assert snap.events_seen == 1
