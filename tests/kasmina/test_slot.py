"""SeedSlot: the lifecycle, gradient isolation, blending, and its one telemetry path."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import (
    HostCNN,
    LifecycleConfig,
    LifecycleError,
    SeedSlot,
    SlotContext,
    alpha_schedule,
)
from esper.leyline import (
    BlendMode,
    SeedStage,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    is_valid_transition,
    validate_payload,
)

ET = TelemetryEventType
HEALTHY = {"has_nonfinite": False, "has_exploding": False, "has_vanishing": False}


def _slot(events: list[TelemetryEvent], **ctx: object) -> SeedSlot:
    context = SlotContext(env_id=3, device="cpu", emit=events.append)
    for k, v in ctx.items():
        setattr(context, k, v)
    return SeedSlot("mid", 8, LifecycleConfig(), context)


def _walk_to(slot: SeedSlot, stage: SeedStage, acc: float = 90.0) -> None:
    for _ in range(40):
        if slot.stage is stage:
            return
        slot.end_epoch(acc, HEALTHY, counterfactual=1.0)
    raise AssertionError(f"never reached {stage.name}, stuck at {slot.stage.name}")


def test_full_lifecycle_to_fossilized_emits_valid_complete_events() -> None:
    events: list[TelemetryEvent] = []
    slot = _slot(events)
    slot.germinate("conv_light", "seed-1", val_accuracy=90.0)
    _walk_to(slot, SeedStage.PROBATIONARY, acc=91.0)
    slot.end_epoch(92.0, HEALTHY, counterfactual=1.5)
    slot.end_epoch(92.0, HEALTHY, counterfactual=1.5)
    assert slot.fossilize()
    assert slot.stage is SeedStage.FOSSILIZED
    types = [e.event_type for e in events]
    assert types[0] is ET.SEED_GERMINATED
    assert types[-1] is ET.SEED_FOSSILIZED
    stages = [
        (e.data["from_stage"], e.data["to_stage"])
        for e in events
        if e.event_type is ET.SEED_STAGE_CHANGED
    ]
    assert stages == [
        ("GERMINATED", "TRAINING"), ("TRAINING", "BLENDING"), ("BLENDING", "PROBATIONARY"),
        ("PROBATIONARY", "FOSSILIZED"),
    ]  # fmt: skip
    gates = [
        (e.data["gate"], e.data["passed"]) for e in events if e.event_type is ET.SEED_GATE_EVALUATED
    ]
    assert gates == [("G0", True), ("G1", True), ("G2", True), ("G3", True)]
    for e in events:
        validate_payload(e.event_type, e.data)
        assert (e.data["env_id"], e.data["device"], e.seed_id) == (3, "cpu", "seed-1")
    fossil = events[-1].data
    assert fossil["improvement"] == pytest.approx(2.0)
    assert fossil["counterfactual"] == 1.5
    assert fossil["params_added"] == slot.state.params > 0  # type: ignore[union-attr]


def test_cull_goes_through_embargo_back_to_dormant() -> None:
    events: list[TelemetryEvent] = []
    slot = _slot(events)
    slot.germinate("norm", "seed-2", val_accuracy=80.0)
    slot.end_epoch(79.0, HEALTHY)
    assert slot.cull("controller")
    assert slot.seed is None
    for _ in range(10):
        slot.end_epoch(80.0)
    assert slot.is_dormant
    chain = [
        (e.data["from_stage"], e.data["to_stage"])
        for e in events
        if e.event_type is ET.SEED_STAGE_CHANGED
    ]
    assert chain[1:] == [
        ("TRAINING", "CULLED"), ("CULLED", "EMBARGOED"), ("EMBARGOED", "RESETTING"),
        ("RESETTING", "DORMANT"),
    ]  # fmt: skip
    assert all(is_valid_transition(SeedStage[a], SeedStage[b]) for a, b in chain)
    culled = next(e for e in events if e.event_type is ET.SEED_CULLED).data
    assert (culled["reason"], culled["auto_culled"], culled["improvement"]) == (
        "controller",
        False,
        -1.0,
    )
    slot.germinate("norm", "seed-3")  # the slot is reusable


def test_illegal_operations_are_refused() -> None:
    slot = _slot([])
    assert not slot.fossilize()
    assert not slot.cull("x")
    slot.germinate("attention", "s")
    with pytest.raises(LifecycleError, match="not DORMANT"):
        slot.germinate("attention", "s2")
    assert not slot.fossilize()  # not PROBATIONARY yet
    with pytest.raises(KeyError, match="unknown blueprint 'nope'"):
        _slot([]).germinate("nope", "s")


def test_training_stage_isolates_host_gradients_but_trains_the_seed() -> None:
    torch.manual_seed(0)
    host = HostCNN(1, 10, (4, 8, 8), context=SlotContext(emit=lambda e: None))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def host_grads() -> list[torch.Tensor]:
        host.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(host(x), y).backward()
        return [p.grad.clone() for p in host.host_parameters()]  # type: ignore[union-attr]

    before_out = host(x).detach()
    before = host_grads()
    slot = host.slot("mid")
    slot.germinate("conv_heavy", "s")
    slot.end_epoch(50.0, HEALTHY)
    assert slot.stage is SeedStage.TRAINING
    assert torch.equal(host(x).detach(), before_out)  # output unchanged while incubating
    after = host_grads()
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    seed_grads = [p.grad for p in slot.trainable_parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in seed_grads)


@pytest.mark.parametrize("mode", [BlendMode.LINEAR, BlendMode.SIGMOID])
def test_alpha_schedules_rise_monotonically_to_one(mode: BlendMode) -> None:
    values = [alpha_schedule(mode, t / 10) for t in range(11)]
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert values[-1] == pytest.approx(1.0)
    assert values == sorted(values)


def test_gated_blending_holds_alpha_while_accuracy_drops() -> None:
    slot = _slot([])
    slot.germinate("conv_light", "s", blend_mode=BlendMode.GATED, val_accuracy=90.0)
    _walk_to(slot, SeedStage.BLENDING)
    assert slot.state is not None
    slot.end_epoch(90.0, HEALTHY)
    held = slot.state.alpha
    assert held > 0
    slot.end_epoch(80.0, HEALTHY)  # 10 points below the blend start: hold
    assert slot.state.alpha == held


def test_a_failing_telemetry_sink_never_aborts_a_lifecycle_operation() -> None:
    def broken(event: TelemetryEvent) -> None:
        raise OSError("sink down")

    slot = SeedSlot("mid", 8, context=SlotContext(emit=broken))
    slot.germinate("conv_light", "s")
    _walk_to(slot, SeedStage.BLENDING)
    assert slot.cull("controller")
    assert slot.telemetry_failures >= 4


@pytest.mark.parametrize(
    ("config", "fast", "expected"),
    [
        (TelemetryConfig(TelemetryLevel.OFF), False, 0),
        (TelemetryConfig(TelemetryLevel.OFF, lifecycle_only=True), False, 1),
        (TelemetryConfig(TelemetryLevel.MINIMAL), False, 1),
        (TelemetryConfig(TelemetryLevel.DEBUG), True, 0),
    ],
)
def test_emit_path_honours_level_lifecycle_only_and_fast_mode(
    config: TelemetryConfig, fast: bool, expected: int
) -> None:
    events: list[TelemetryEvent] = []
    slot = _slot(events, telemetry=config, fast_mode=fast)
    slot.germinate("conv_light", "s")
    assert len(events) == expected


def test_sync_telemetry_copies_state_into_seed_telemetry() -> None:
    slot = _slot([])
    state = slot.germinate("conv_light", "s", val_accuracy=50.0)
    _walk_to(slot, SeedStage.BLENDING, acc=55.0)
    slot.end_epoch(57.0, HEALTHY, counterfactual=1.0)  # one epoch into BLENDING, +2 points
    t = state.sync_telemetry(3.5, 0.9, False, True, epoch=4, max_epochs=20)
    assert (t.seed_id, t.blueprint_id, t.layer_id) == ("s", "conv_light", "mid")
    assert (t.gradient_norm, t.gradient_health, t.has_vanishing, t.has_exploding) == (
        3.5,
        0.9,
        False,
        True,
    )
    # accuracy_delta is the progress of the current stage (plan 003), not since germination.
    assert (t.accuracy, t.accuracy_delta, t.stage, t.alpha) == (
        57.0,
        2.0,
        int(SeedStage.BLENDING),
        state.alpha,
    )
    assert state.metrics.accuracy_delta == 7.0
    assert (t.epochs_in_stage, t.epoch, t.max_epochs) == (1, 4, 20)
