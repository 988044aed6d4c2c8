"""COUNTERFACTUAL_COMPUTED: what a blended seed adds, measured against its alpha=0 baseline
(the env measures it inside the epoch), or why it could not be measured."""

from __future__ import annotations

from esper.leyline import EmitsEvents, TelemetryEventType, emit_event

ET = TelemetryEventType


def _emit(
    hub: EmitsEvents,
    env_id: int,
    slot_id: str,
    *,
    measured: tuple[float, float] | None,
    reason: str | None,
    epoch: int | None,
) -> None:
    real, baseline = measured if measured is not None else (None, None)
    contribution = None if measured is None else measured[0] - measured[1]
    emit_event(
        hub.emit,
        ET.COUNTERFACTUAL_COMPUTED,
        {
            "env_id": env_id,
            "slot_id": slot_id,
            "available": measured is not None,
            "reason": reason,
            "real_accuracy": real,
            "baseline_accuracy": baseline,
            "contribution": contribution,
        },
        message=f"counterfactual {slot_id}: "
        + (f"unavailable ({reason})" if contribution is None else f"{contribution:+.2f} points"),
        slot_id=slot_id,
        epoch=epoch,
    )


def emit_counterfactual_unavailable(
    hub: EmitsEvents, env_id: int, slot_id: str, reason: str, *, epoch: int | None = None
) -> None:
    """COUNTERFACTUAL_COMPUTED with available=false and why (at ``epoch`` of the episode)."""
    _emit(hub, env_id, slot_id, measured=None, reason=reason, epoch=epoch)


def emit_counterfactual_computed(
    hub: EmitsEvents,
    env_id: int,
    slot_id: str,
    real: float,
    baseline: float,
    *,
    epoch: int | None = None,
) -> None:
    """COUNTERFACTUAL_COMPUTED with the measured alpha=0 baseline (at ``epoch``)."""
    _emit(hub, env_id, slot_id, measured=(real, baseline), reason=None, epoch=epoch)
