"""The Sanctum snapshot: everything a person watching a run needs, as plain dataclasses.

``SanctumAggregator.get_snapshot()`` returns a deep copy, so the UI may read it freely.
Sections that mirror an event's payload keep its field names; the capture map
(``esper.karn.sanctum.capture.CAPTURE``) says where every catalogue field lands.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

EVENT_LOG_CAP = 500
DECISIONS_CAP = 64
HISTORY_CAP = 200
WARNINGS_CAP = 50


@dataclass(slots=True)
class RunConfig:
    """TRAINING_STARTED: the run's configuration."""

    run_id: str = ""
    mode: str = ""
    task: str = ""
    task_type: str = ""
    topology: str = ""
    max_epochs: int = 0
    n_envs: int = 0
    n_episodes: int = 0
    seed: int | None = None
    policy_device: str | None = None
    env_devices: list[str] = field(default_factory=list)
    env_device_counts: dict[str, int] = field(default_factory=dict)
    env_device_map_strategy: str = ""
    host_params: int = 0
    slot_ids: list[str] = field(default_factory=list)
    blueprint_ids: list[str] = field(default_factory=list)
    reward_mode: str = ""
    use_telemetry: bool = False
    telemetry_level: str = ""
    state_dim: int | None = None
    resume_path: str | None = ""
    """Checkpoint resumed from; empty (or None, as the event says) for a fresh run."""
    lr: float | None = 0.0
    """None for a run without a learned policy (heuristic), as its event says."""
    clip_ratio: float | None = 0.2
    entropy_coef: float | None = 0.01
    entropy_anneal: dict[str, Any] = field(default_factory=dict)
    """Entropy schedule (start, end, episodes); empty when the coefficient is constant."""
    gpu_preload: bool = False
    dataloader: str = ""
    param_budget: int = 0
    threads: int = 0
    threads_source: str = ""
    cpu_cores: int = 0
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    node: str = ""
    node_rank: int = 0
    restart_count: int = 0
    local_n_envs: int = 0
    escalate_epochs: int = 0


@dataclass(slots=True)
class TamiyoState:
    """PPO_UPDATE_COMPLETED: the controller's latest vital signs, and short histories."""

    updates: int = 0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy: float = 0.0
    kl_divergence: float = 0.0
    clip_fraction: float = 0.0
    explained_variance: float = 0.0
    learning_rate: float = 0.0
    """The policy optimizer's learning rate (the event's ``lr``)."""
    entropy_coef: float = 0.0
    ratio_mean: float = 0.0
    ratio_min: float = 0.0
    ratio_max: float = 0.0
    ratio_std: float = 0.0
    grad_norm: float = 0.0
    update_time_ms: float = 0.0
    nan_grad_count: int = 0
    dead_layers: int = 0
    exploding_layers: int = 0
    layer_gradient_health: float = 0.0
    layer_gradient_health_by_layer: dict[str, float] = field(default_factory=dict)
    entropy_collapsed: bool = False
    inner_epoch: int = 0
    batch: int = 0
    train_steps: int = 0
    early_stop_epoch: int | None = None
    avg_accuracy: float = 0.0
    avg_reward: float = 0.0
    rolling_avg_accuracy: float = 0.0
    head_op_entropy: float = 0.0
    head_slot_entropy: float = 0.0
    head_blueprint_entropy: float = 0.0
    head_blend_entropy: float = 0.0
    head_op_grad_norm: float = 0.0
    head_slot_grad_norm: float = 0.0
    head_blueprint_grad_norm: float = 0.0
    head_blend_grad_norm: float = 0.0
    policy_loss_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    entropy_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    kl_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    reward_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    """The mean episode reward of each batch."""
    policy_anomalies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lr(self) -> float:
        """``learning_rate`` under its earlier name."""
        return self.learning_rate


@dataclass(slots=True)
class SeedState:
    """One slot's seed, from its SEED_* events and the env's epoch picture."""

    slot_id: str = ""
    seed_id: str = ""
    blueprint_id: str = ""
    stage: str = "DORMANT"
    alpha: float = 0.0
    env_id: int = 0
    device: str = ""
    inner_epoch: int = 0
    global_epoch: int = 0
    epochs_total: int = 0
    epochs_in_stage: int = 0
    params: int = 0
    accuracy_delta: float = 0.0
    gradient_norm: float = 0.0
    gradient_total_norm: float = 0.0
    gradient_health: float = 1.0
    has_vanishing: bool = False
    has_exploding: bool = False
    from_stage: str = ""
    to_stage: str = ""
    counterfactual: float | None = None
    improvement: float | None = None
    blending_delta: float | None = None
    params_added: int = 0
    reason: str = ""
    auto_culled: bool = False
    outcome: str = ""
    last_gate: dict[str, Any] = field(default_factory=dict)
    counterfactual_detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DecisionSnapshot:
    """ANALYTICS_SNAPSHOT kind=last_action: one decision of the controller."""

    env_id: int = 0
    epoch: int = 0
    op: str = ""
    slot_id: str = ""
    blueprint_id: str = ""
    blend_id: str = ""
    op_masked: bool = False
    slot_masked: bool = False
    blueprint_masked: bool = False
    blend_masked: bool = False
    action_success: bool = False


@dataclass(slots=True)
class EnvState:
    """One environment: its latest epoch, seeds, and what happened to it."""

    env_id: int = 0
    device: str = ""
    inner_epoch: int = 0
    train_loss: float = 0.0
    train_accuracy: float = 0.0
    val_loss: float = 0.0
    val_accuracy: float = 0.0
    host_grad_norm: float = 0.0
    seeds: dict[str, SeedState] = field(default_factory=dict)
    accuracy_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    grad_norm_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    """The host's gradient norm of each epoch."""
    rollbacks: int = 0
    last_rollback: dict[str, Any] = field(default_factory=dict)
    last_anomaly: dict[str, Any] = field(default_factory=dict)
    anomalies: int = 0
    plateau: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    last_reward: dict[str, Any] = field(default_factory=dict)
    reward_summary: dict[str, Any] = field(default_factory=dict)
    last_decision: DecisionSnapshot | None = None
    escalated: bool = False
    """Its telemetry runs at debug now, after something went wrong in it."""
    escalations: int = 0
    """Windows of debug detail the record holds for it."""


@dataclass(slots=True)
class EventLogEntry:
    """A line of the event log: lifecycle events with what matters about them."""

    timestamp_ns: int
    event_type: str
    message: str
    env_id: int | None = None
    slot_id: str | None = None
    seed_id: str | None = None
    severity: str = "info"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SanctumSnapshot:
    """The whole picture of a run at one moment."""

    run_config: RunConfig = field(default_factory=RunConfig)
    tamiyo: TamiyoState = field(default_factory=TamiyoState)
    envs: dict[int, EnvState] = field(default_factory=dict)
    batch_idx: int = 0
    episodes_completed: int = 0
    batch_total_episodes: int = 0
    start_episode: int = 0
    requested_episodes: int = 0
    env_accuracies: list[float] = field(default_factory=list)
    batch_avg_accuracy: float = 0.0
    batch_rolling_accuracy: float = 0.0
    batch_avg_reward: float = 0.0
    reward_mode: str = ""
    task_name: str = ""
    aggregate: dict[str, Any] = field(default_factory=dict)
    """The last EPOCH_COMPLETED with scope=aggregate."""
    action_distribution: dict[str, Any] = field(default_factory=dict)
    mask_hit_rates: dict[str, Any] = field(default_factory=dict)
    collectives: dict[str, Any] = field(default_factory=dict)
    """The last collectives snapshot (a multi-rank run's waits; of whichever rank sent it)."""
    recent_decisions: deque[DecisionSnapshot] = field(
        default_factory=lambda: deque(maxlen=DECISIONS_CAP)
    )
    event_log: deque[EventLogEntry] = field(default_factory=lambda: deque(maxlen=EVENT_LOG_CAP))
    telemetry_warnings: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=WARNINGS_CAP)
    )
    last_anomaly: dict[str, Any] = field(default_factory=dict)
    """The last GRADIENT_ANOMALY (any scope; the env's own is on its EnvState too)."""
    last_warning: dict[str, Any] = field(default_factory=dict)
    last_level_change: dict[str, Any] = field(default_factory=dict)
    """The last TELEMETRY_LEVEL_CHANGED: an escalation opening or closing."""
    escalated_run: bool = False
    """Every env runs at debug now, after the policy went wrong."""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    resumed_from: dict[str, Any] = field(default_factory=dict)
    telemetry_account: dict[str, Any] = field(default_factory=dict)
    """The telemetry's own account at the run's end (TELEMETRY_CLOSED): counts by backend."""
    completed: dict[str, Any] = field(default_factory=dict)
    """TRAINING_COMPLETED, once the run ends."""
    events_seen: int = 0
    fields_dropped: int = 0
    """Payload fields that could not be stored (a malformed event, e.g. from an old file)."""
    last_event_ns: int = 0
