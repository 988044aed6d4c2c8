"""TolariaGovernor: NaN, Inf and divergence detection; rollback restores and reports."""

from __future__ import annotations

import math

import torch

from esper.kasmina import HostCNN, SlotContext
from esper.leyline import TelemetryEvent, TelemetryEventType, validate_payload
from esper.tolaria.governor import TolariaGovernor


def _host(events: list[TelemetryEvent]) -> HostCNN:
    torch.manual_seed(0)
    return HostCNN(
        1, 10, (4, 8, 8), context=SlotContext(env_id=2, device="cpu", emit=events.append)
    )


def test_healthy_losses_never_panic() -> None:
    gov = TolariaGovernor(_host([]))
    gov.snapshot()
    assert [gov.check(x) for x in (2.3, 1.5, 1.0, 0.8, 0.6, 0.05, 0.03, 0.2)] == [None] * 8


def test_nan_inf_and_divergence_are_panics() -> None:
    gov = TolariaGovernor(_host([]))
    assert gov.check(math.nan) == "nan_loss"
    assert gov.check(math.inf) == "inf_loss"
    for x in (1.0, 0.9, 0.8):
        gov.check(x)
    assert gov.check(50.0) == "divergence"


def test_rollback_restores_the_last_good_state_culls_live_seeds_and_reports() -> None:
    events: list[TelemetryEvent] = []
    host = _host(events)
    gov = TolariaGovernor(host, env_id=2, emit=events.append)
    opt = torch.optim.SGD(host.host_parameters(), lr=0.1, momentum=0.9)
    gov.check(1.0)  # healthy: snapshot
    good = {k: v.clone() for k, v in host.state_dict().items()}
    host.slot("mid").germinate("conv_light", "s1")
    with torch.no_grad():
        for p in host.host_parameters():
            p.fill_(math.nan)
    opt.state[host.head.weight] = {"momentum_buffer": torch.zeros(1)}
    assert gov.check(math.nan) == "nan_loss"
    culled = gov.execute_rollback("nan_loss", math.nan, opt)
    assert culled == 1
    assert host.slot("mid").seed is None
    for k, v in host.state_dict().items():
        assert torch.equal(v, good[k]), k
    assert not opt.state
    rollback = [e for e in events if e.event_type is TelemetryEventType.GOVERNOR_ROLLBACK]
    assert len(rollback) == 1
    data = rollback[0].data
    validate_payload(TelemetryEventType.GOVERNOR_ROLLBACK, data)
    assert (data["env_id"], data["device"], data["reason"], data["seeds_culled"]) == (
        2,
        "cpu",
        "nan_loss",
        1,
    )
    culls = [e for e in events if e.event_type is TelemetryEventType.SEED_CULLED]
    assert culls[0].data["reason"] == "rollback"
    assert culls[0].data["auto_culled"] is True


def _judged(losses: list[float]) -> TolariaGovernor:
    gov = TolariaGovernor(_host([]), env_id=2)
    for loss in losses:
        gov.check(loss)
    return gov


def test_a_loss_far_above_its_recent_level_is_a_spike_not_a_panic() -> None:
    falling = [2.1, 1.33, 0.58, 0.34, 0.24, 0.17, 0.14, 0.12, 0.10]
    gov = _judged(falling)
    assert gov.last_spike is None  # a fast fall is no spike, however steep
    assert gov.check(0.57) is None  # no rollback: below the panic threshold
    assert gov.last_spike is not None
    loss, band = gov.last_spike
    assert loss == 0.57
    assert 0.12 < band < 0.57
    assert gov.check(0.11) is None
    assert gov.last_spike is None  # one spike does not widen the band for the next


def test_a_steady_loss_wiggling_is_no_spike_and_a_panic_is_not_also_a_spike() -> None:
    gov = _judged([0.30, 0.31, 0.29, 0.30, 0.32, 0.30])
    assert gov.check(0.40) is None
    assert gov.last_spike is None  # under half again the recent level
    assert gov.check(0.60) is None  # twice its level (the 0.40 raised the level a little)
    assert gov.last_spike is not None
    assert gov.check(50.0) == "divergence"
    assert gov.last_spike is None
    assert _judged([0.3, 0.3]).spike_band() == math.inf  # not enough history yet
