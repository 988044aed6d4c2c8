"""The charts a run report draws: what each shows, from which event field, in which section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChartSpec:
    id: str
    section: str
    title: str
    unit: str
    """The y axis's unit, as the page prints it (empty: a plain number)."""
    help: str
    log: bool = False


SECTIONS: tuple[tuple[str, str], ...] = (
    ("training", "Training"),
    ("ppo", "PPO vitals"),
    ("gradients", "Gradients"),
    ("throughput", "Throughput"),
    ("rewards", "Rewards and actions"),
    ("ranks", "Ranks"),
)

CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("val_accuracy", "training", "Validation accuracy by env", "%",
              "EPOCH_COMPLETED (scope env) val_accuracy"),
    ChartSpec("val_loss", "training", "Validation loss by env", "",
              "EPOCH_COMPLETED (scope env) val_loss"),
    ChartSpec("train_loss", "training", "Training loss by env", "",
              "EPOCH_COMPLETED (scope env) train_loss; loss spikes are judged on it"),
    ChartSpec("batch_accuracy", "training", "Batch accuracy", "%",
              "BATCH_EPOCH_COMPLETED avg_accuracy and rolling_accuracy"),
    ChartSpec("batch_reward", "training", "Batch reward", "",
              "BATCH_EPOCH_COMPLETED avg_reward: mean episode reward of the batch"),
    ChartSpec("ppo_policy_loss", "ppo", "Policy loss", "", "PPO_UPDATE_COMPLETED policy_loss"),
    ChartSpec("ppo_value_loss", "ppo", "Value loss", "", "PPO_UPDATE_COMPLETED value_loss"),
    ChartSpec("ppo_entropy", "ppo", "Entropy, total and per head", "",
              "PPO_UPDATE_COMPLETED entropy and head_<head>_entropy"),
    ChartSpec("ppo_kl", "ppo", "KL divergence", "", "PPO_UPDATE_COMPLETED kl_divergence"),
    ChartSpec("ppo_clip_fraction", "ppo", "Clip fraction", "",
              "PPO_UPDATE_COMPLETED clip_fraction"),
    ChartSpec("ppo_explained_variance", "ppo", "Explained variance", "",
              "PPO_UPDATE_COMPLETED explained_variance"),
    ChartSpec("ppo_grad_norm", "ppo", "Policy gradient norm, total and per head", "",
              "PPO_UPDATE_COMPLETED grad_norm and head_<head>_grad_norm"),
    ChartSpec("ppo_lr", "ppo", "Learning rate", "", "PPO_UPDATE_COMPLETED lr"),
    ChartSpec("host_grad_norm", "gradients", "Host gradient norm by env", "",
              "EPOCH_COMPLETED (scope env) host_grad_norm", log=True),
    ChartSpec("seed_grad_norm", "gradients", "Seed gradient norm by env and slot", "",
              "EPOCH_COMPLETED (scope env) seeds.<slot>.gradient_norm", log=True),
    ChartSpec("step_time", "throughput", "Step time by env", "ms",
              "ANALYTICS_SNAPSHOT (kind throughput) step_time_ms"),
    ChartSpec("fps", "throughput", "Samples per second by env", "/s",
              "ANALYTICS_SNAPSHOT (kind throughput) fps"),
    ChartSpec("dataloader_wait", "throughput", "Dataloader wait by env", "ms",
              "ANALYTICS_SNAPSHOT (kind throughput) dataloader_wait_ms"),
    ChartSpec("reward_components", "rewards", "Reward components (mean over envs)", "",
              "ANALYTICS_SNAPSHOT (kind reward_summary): each component's episode sum, "
              "averaged over the batch's envs"),
    ChartSpec("actions", "rewards", "Actions per batch", "",
              "ANALYTICS_SNAPSHOT (kind action_distribution) action_counts"),
    ChartSpec("mask_hits", "rewards", "Action mask hit rate by head", "",
              "ANALYTICS_SNAPSHOT (kind mask_hit_rates) mask_hits / mask_total"),
    ChartSpec("rank_epoch_seconds", "ranks", "Epoch time by rank", "s",
              "EPOCH_COMPLETED (scope aggregate) epoch_seconds of each rank"),
    ChartSpec("straggler", "ranks", "Slowest rank against the median", "s",
              "per epoch: the slowest rank's epoch_seconds and the median over ranks"),
    ChartSpec("collective_wait", "ranks", "Collective wait by rank", "s",
              "ANALYTICS_SNAPSHOT (kind collectives) wait_seconds_total per batch"),
)  # fmt: skip
CHART_IDS = frozenset(c.id for c in CHARTS)

PPO_FIELDS = {
    "ppo_policy_loss": ("policy_loss",),
    "ppo_value_loss": ("value_loss",),
    "ppo_kl": ("kl_divergence",),
    "ppo_clip_fraction": ("clip_fraction",),
    "ppo_explained_variance": ("explained_variance",),
    "ppo_lr": ("lr",),
}
