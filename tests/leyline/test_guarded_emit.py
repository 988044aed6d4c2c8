"""One guarded path for the events of the model and training layers (``emit_event``).

Strict mode (the suite's) raises PayloadError to the code that built a bad payload; production
delivers it and the hub counts it invalid; a failing sink is logged and counted, never silent.
Each of the four sites that used to catch every exception and only log is checked here: under
strict mode they dropped the event, delivered nothing, counted nothing, and the test passed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from esper.kasmina import HostCNN, SeedSlot, SlotContext
from esper.leyline import (
    CATALOGUE,
    FieldSpec,
    FieldType,
    PayloadError,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
    emit_event,
    set_strict_payloads,
    sink_failures,
    strict_payloads,
)
from esper.leyline import _payloads as payloads
from esper.nissa import InMemoryOutput, NissaHub
from esper.tolaria.data import load_task
from esper.tolaria.environment import EnvConfig, MorphogeneticEnv
from esper.tolaria.governor import TolariaGovernor
from tests.kasmina.test_slot import HEALTHY

ET = TelemetryEventType


@pytest.fixture
def production() -> Iterator[None]:
    """Payloads checked by the hub, off the training thread, as in a user's run."""
    before = strict_payloads()
    set_strict_payloads(False)
    try:
        yield
    finally:
        set_strict_payloads(before)


def _drift(monkeypatch: pytest.MonkeyPatch, event_type: ET, variant: str | None) -> None:
    """The catalogue gains a required field its emitter does not fill: the drift strict mode
    exists to catch at the line that emits. (``variant``: the EPOCH_COMPLETED scope, or None
    for an event type of one payload.)"""
    spec = CATALOGUE[(event_type, variant)]
    added = FieldSpec("added_in_catalogue", FieldType.INT, "", "a field the emitter lacks")
    patched = dataclasses.replace(spec, fields=(*spec.fields, added))
    monkeypatch.setitem(CATALOGUE, (event_type, variant), patched)
    fits = payloads.payload_fits  # validation's own reference to the compiled check
    monkeypatch.setattr(
        payloads,
        "payload_fits",
        lambda t, data: False if (t, data.get("scope")) == (event_type, variant) else fits(t, data),
    )


def _env(events: list[TelemetryEvent]) -> MorphogeneticEnv:
    env = MorphogeneticEnv(0, load_task("digits"), config=EnvConfig(), emit=events.append)
    env.reset(0)
    return env


def test_the_slot_raises_a_bad_payload_in_strict_mode() -> None:
    slot = SeedSlot("mid", 8, context=SlotContext(emit=lambda _e: None))
    slot.germinate("conv_light", "s")
    with pytest.raises(PayloadError, match=r"SEED_CULLED.*reason"):
        slot.cull("not-a-catalogue-reason")


def test_the_governor_raises_a_bad_payload_in_strict_mode() -> None:
    events: list[TelemetryEvent] = []
    torch.manual_seed(0)
    host = HostCNN(1, 10, (4, 8, 8), context=SlotContext(env_id=2, emit=events.append))
    gov = TolariaGovernor(host, env_id=2, emit=events.append)
    gov.check(1.0)  # a good state to roll back to
    with pytest.raises(PayloadError, match=r"GOVERNOR_ROLLBACK.*reason"):
        gov.execute_rollback("not-a-catalogue-reason", 1.0)


def test_the_env_raises_a_bad_epoch_payload_in_strict_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env([])
    _drift(monkeypatch, ET.EPOCH_COMPLETED, "env")
    with pytest.raises(PayloadError, match="added_in_catalogue"):
        env.run_epoch(1, 1, 3)


def test_the_env_raises_a_bad_counterfactual_payload_in_strict_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env([])
    slot = env.model.slot("mid")
    slot.germinate("conv_light", "s1", val_accuracy=50.0)
    while slot.stage is not SeedStage.BLENDING:
        slot.end_epoch(50.0, HEALTHY)
    _drift(monkeypatch, ET.COUNTERFACTUAL_COMPUTED, None)
    with pytest.raises(PayloadError, match=r"COUNTERFACTUAL_COMPUTED.*added_in_catalogue"):
        env.run_epoch(1, 1, 3)


@pytest.mark.usefixtures("production")
def test_in_production_a_bad_payload_is_delivered_and_counted_invalid() -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    torch.manual_seed(0)
    host = HostCNN(1, 10, (4, 8, 8), context=SlotContext(env_id=2, emit=hub.emit))
    gov = TolariaGovernor(host, env_id=2, emit=hub.emit)
    gov.check(1.0)
    gov.execute_rollback("not-a-catalogue-reason", math.nan)  # the rollback completes
    hub.close()
    assert [e.data["reason"] for e in out.events if e.event_type is ET.GOVERNOR_ROLLBACK] == [
        "not-a-catalogue-reason"
    ]
    assert hub.stats().invalid == 1


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "production"])
def test_a_failing_sink_is_counted_and_never_raised(strict: bool) -> None:
    def broken(event: TelemetryEvent) -> None:
        raise OSError("sink down")

    before = strict_payloads()
    set_strict_payloads(strict)
    try:
        count, _ = sink_failures()
        delivered = emit_event(
            broken, ET.TELEMETRY_WARNING, {"reason": "events_lost", "detail": "x"}
        )
        after, first = sink_failures()
    finally:
        set_strict_payloads(before)
    assert delivered is False
    assert after == count + 1
    assert first is not None
    assert "OSError" in first
