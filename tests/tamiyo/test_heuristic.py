"""HeuristicTamiyo's rules and the SignalTracker's plateau detection."""

from __future__ import annotations

from esper.kasmina import HostCNN, SeedSlot, SlotContext
from esper.leyline import Op, SeedStage, TelemetryEvent, TelemetryEventType
from esper.tamiyo import HeuristicTamiyo, SignalTracker

HEALTHY = {"has_nonfinite": False, "has_exploding": False, "has_vanishing": False}


def _slots() -> list[SeedSlot]:
    return list(
        HostCNN(1, 10, (4, 8, 8), context=SlotContext(emit=lambda e: None)).seed_slots.values()
    )


def _to_probation(slot: SeedSlot, counterfactual: float) -> None:
    slot.germinate("conv_light", "s", val_accuracy=90.0)
    while slot.stage is not SeedStage.PROBATIONARY:
        slot.end_epoch(90.5, HEALTHY, counterfactual)
    for _ in range(slot.lifecycle.probation_epochs):
        slot.end_epoch(90.5, HEALTHY, counterfactual)


def test_germinates_on_a_plateau_in_the_preferred_slot_within_budget() -> None:
    slots = _slots()
    tamiyo = HeuristicTamiyo(param_budget=10**6)
    kw = {"inner_epoch": 5, "max_epochs": 30, "seed_params": 0}
    assert tamiyo.decide(slots, plateau=False, **kw).op is Op.WAIT
    d = tamiyo.decide(slots, plateau=True, **kw)
    assert (d.op, d.slot_id) == (Op.GERMINATE, "mid")
    assert HeuristicTamiyo(param_budget=10).decide(slots, plateau=True, **kw).op is Op.WAIT
    late = {"inner_epoch": 25, "max_epochs": 30, "seed_params": 0}
    assert tamiyo.decide(slots, plateau=True, **late).op is Op.WAIT


def test_fossilizes_proven_improvement_and_culls_harm() -> None:
    kw = {"plateau": False, "inner_epoch": 20, "max_epochs": 30, "seed_params": 0}
    slots = _slots()
    _to_probation(slots[1], counterfactual=2.0)
    assert HeuristicTamiyo().decide(slots, **kw).op is Op.FOSSILIZE
    slots = _slots()
    _to_probation(slots[1], counterfactual=-0.5)
    assert HeuristicTamiyo().decide(slots, **kw).op is Op.CULL


def test_plateau_is_reported_once_at_onset() -> None:
    events: list[TelemetryEvent] = []
    tracker = SignalTracker(0, patience=2, emit=events.append)
    flags = [tracker.update(acc, i) for i, acc in enumerate([50, 60, 60, 60, 60, 70, 70, 70], 1)]
    assert flags == [False, False, False, True, True, False, False, True]
    assert [e.data["inner_epoch"] for e in events] == [4, 8]
    assert all(e.event_type is TelemetryEventType.PLATEAU_DETECTED for e in events)
