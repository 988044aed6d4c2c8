"""The PPO run's telemetry, one helper per event (SPEC 5). Each builds its payload through the
catalogue (``make_event``) and hands it to ``hub.emit``: it only enqueues."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from esper.leyline import (
    EmitsEvents,
    Severity,
    TelemetryConfig,
    TelemetryEventType,
    TelemetryLevel,
    emit_event,
)
from esper.tolaria.counterfactual import (
    emit_counterfactual_computed,
    emit_counterfactual_unavailable,
)

ET = TelemetryEventType
SNAPSHOT = ET.ANALYTICS_SNAPSHOT

# The counterfactual events are the training loop's (it measures them); the plans name them here.
_emit_cf_unavailable = emit_counterfactual_unavailable
_emit_cf_computed = emit_counterfactual_computed


class EnvWithSlots(Protocol):
    """An env (MorphogeneticEnv): its slot context, and its model's ``seed_slots``."""

    @property
    def context(self) -> Any: ...

    @property
    def model(self) -> Any: ...


def _apply_slot_telemetry(
    env_state: EnvWithSlots, telemetry_enabled: bool = True, lifecycle_only: bool = False
) -> TelemetryConfig:
    """Set what an env's slots emit: everything when ``telemetry_enabled``; otherwise only
    their lifecycle events when ``lifecycle_only``; otherwise nothing (fast mode). Each slot
    of the env's current model gets ``fast_mode`` and its ``on_telemetry`` sink (the env's);
    the env's context keeps the level, so the slots of the next episode's model follow it
    too."""
    if telemetry_enabled:
        config = TelemetryConfig(TelemetryLevel.NORMAL, lifecycle_only)
    else:
        config = TelemetryConfig(TelemetryLevel.OFF, lifecycle_only)
    env_state.context.telemetry = config
    emitting = config.lifecycle
    for slot in env_state.model.seed_slots.values():
        slot.fast_mode = not emitting
        slot.on_telemetry = env_state.context.emit if emitting else None
    return config


def _emit_ppo_update_event(
    *,
    hub: EmitsEvents,
    metrics: Mapping[str, Any],
    episodes_completed: int,
    batch_idx: int,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    grad_norm: float,
    update_time_ms: float,
    avg_accuracy: float = 0.0,
    avg_reward: float = 0.0,
    rolling_avg_accuracy: float = 0.0,
) -> None:
    """PPO_UPDATE_COMPLETED: the update's vital signs; lr is read from the optimizer."""
    data = {
        **metrics,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "grad_norm": grad_norm,
        "update_time_ms": update_time_ms,
        "inner_epoch": epoch,
        "batch": batch_idx,
        "avg_accuracy": avg_accuracy,
        "avg_reward": avg_reward,
        "rolling_avg_accuracy": rolling_avg_accuracy,
    }
    severity = Severity.WARNING if metrics.get("entropy_collapsed") else Severity.INFO
    emit_event(
        hub.emit,
        ET.PPO_UPDATE_COMPLETED,
        data,
        message=f"PPO update {batch_idx} after {episodes_completed} episodes: "
        f"policy loss {data.get('policy_loss', float('nan')):.4f}",
        severity=severity,
        epoch=epoch,
    )


def _emit_action_distribution(
    hub: EmitsEvents,
    *,
    batch_idx: int,
    episodes_completed: int,
    action_counts: Mapping[str, int],
    success_counts: Mapping[str, int],
) -> None:
    """ANALYTICS_SNAPSHOT kind=action_distribution: how often each op was taken."""
    emit_event(
        hub.emit,
        SNAPSHOT,
        {
            "kind": "action_distribution",
            "batch_idx": batch_idx,
            "episodes_completed": episodes_completed,
            "action_counts": dict(action_counts),
            "success_counts": dict(success_counts),
        },
        message=f"batch {batch_idx} actions {dict(action_counts)}",
    )


def _emit_throughput(
    hub: EmitsEvents,
    *,
    env_id: int,
    batch_idx: int,
    episodes_completed: int,
    step_time_ms: float,
    dataloader_wait_ms: float,
    fps: float | None = None,
) -> None:
    """ANALYTICS_SNAPSHOT kind=throughput: one env's speed over a batch (``fps`` when the
    samples processed are known)."""
    emit_event(
        hub.emit,
        SNAPSHOT,
        {
            "kind": "throughput",
            "env_id": env_id,
            "batch_idx": batch_idx,
            "episodes_completed": episodes_completed,
            "step_time_ms": step_time_ms,
            "fps": fps,
            "dataloader_wait_ms": dataloader_wait_ms,
        },
        message=f"env {env_id}: {step_time_ms:.1f} ms/step"
        + ("" if fps is None else f", {fps:.0f} samples/s"),
    )


def _emit_reward_summary(
    hub: EmitsEvents, *, env_id: int, batch_idx: int, summary: Mapping[str, float]
) -> None:
    """ANALYTICS_SNAPSHOT kind=reward_summary: an env's reward components over its episode."""
    emit_event(
        hub.emit,
        SNAPSHOT,
        {
            "kind": "reward_summary",
            "env_id": env_id,
            "batch_idx": batch_idx,
            "summary": dict(summary),
        },
        message=f"env {env_id}: episode reward {sum(summary.values()):.3f}",
    )


def _emit_mask_hit_rates(
    hub: EmitsEvents,
    *,
    batch_idx: int,
    episodes_completed: int,
    mask_hits: Mapping[str, int],
    mask_total: Mapping[str, int],
) -> None:
    """ANALYTICS_SNAPSHOT kind=mask_hit_rates: decisions where a mask removed a choice."""
    emit_event(
        hub.emit,
        SNAPSHOT,
        {
            "kind": "mask_hit_rates",
            "batch_idx": batch_idx,
            "episodes_completed": episodes_completed,
            "mask_hits": dict(mask_hits),
            "mask_total": dict(mask_total),
        },
        message=f"batch {batch_idx} mask hits {dict(mask_hits)}",
    )


def _emit_collectives(
    hub: EmitsEvents,
    *,
    batch_idx: int,
    rank: int,
    waits: list[tuple[str, float]],
    policy_digest: str,
) -> None:
    """ANALYTICS_SNAPSHOT kind=collectives: this rank's collective calls in a batch and how
    long each took (mostly waiting for the slowest rank)."""
    by_op: dict[str, list[float]] = {}
    for op, seconds in waits:
        by_op.setdefault(op, []).append(seconds)
    total = sum(seconds for _, seconds in waits)
    emit_event(
        hub.emit,
        ET.ANALYTICS_SNAPSHOT,
        {
            "kind": "collectives",
            "batch_idx": batch_idx,
            "rank": rank,
            "calls": len(waits),
            "wait_seconds_total": total,
            "wait_seconds_max": max((seconds for _, seconds in waits), default=0.0),
            "wait_seconds": by_op,
            "policy_digest": policy_digest,
        },
        message=f"rank {rank} batch {batch_idx}: {len(waits)} collectives, {total:.3f} s waiting",
    )
