"""The payload catalogue: every field of every event payload, declared once (the schema
language is ``_schema``; validation and ``make_event`` are ``_payloads``).

Emitters build payloads through ``make_event`` (which validates against this catalogue); the
Prometheus mapping, the Sanctum capture map, ``docs/EVENTS.md`` and the coverage tests all read
it. A field added to an emitter but not here fails validation; a field declared here but not
emitted fails the coverage tests.

Two event types carry variants told apart by a discriminator field in the payload:
``EPOCH_COMPLETED`` by ``scope`` (``env`` or ``aggregate``) and ``ANALYTICS_SNAPSHOT`` by
``kind``.
"""

from __future__ import annotations

from esper.leyline._actions import ACTION_HEADS
from esper.leyline._events import TelemetryEventType
from esper.leyline._fastcheck import compile_checks
from esper.leyline._schema import (
    BOOL,
    DICT,
    DISCRIMINATORS,
    FLT,
    INT,
    LIST,
    STR,
    FieldSpec,
    PayloadSpec,
    _f,
)

ET = TelemetryEventType

_LEVELS = ("off", "minimal", "normal", "debug")


ENV_ID = _f("env_id", INT, "", "environment index (global over a multi-rank run's ranks)")
"""The env an event is about: one declaration for every payload that names one."""
BATCH_IDX = _f("batch_idx", INT, "", "batch index: the batch of episodes (one per env), from 0")
INNER_EPOCH = _f("inner_epoch", INT, "epochs", "epoch within the episode, from 1")
"""(PPO_UPDATE_COMPLETED's ``inner_epoch`` means the episode's length: declared there.)"""

SEED_FIELDS: tuple[FieldSpec, ...] = (
    ENV_ID,
    _f("device", STR, "", "torch device the env's host model runs on, e.g. cuda:1"),
    _f("slot_id", STR, "", "host slot the seed lives in (early, mid, late)"),
    _f("seed_id", STR, "", "unique id of the seed within the run"),
    _f("blueprint_id", STR, "", "blueprint the seed was built from"),
    _f("alpha", FLT, "ratio", "blend weight of the seed's output, 0..1"),
    INNER_EPOCH,
    _f("global_epoch", INT, "batches", "batch counter of the run when the event happened"),
    _f("epochs_total", INT, "epochs", "epochs since the seed germinated"),
    _f("epochs_in_stage", INT, "epochs", "epochs spent in the current stage"),
)
"""Fields every SEED_* event carries."""


def _counts(*, on_warning: bool) -> tuple[FieldSpec, FieldSpec]:
    """The telemetry's own drop and loss counts, as TELEMETRY_CLOSED (always) and a
    TELEMETRY_WARNING about drops or losses carry them."""
    when = "; on a TELEMETRY_WARNING, present when it reports drops or losses" if on_warning else ""
    return (
        _f("dropped", DICT, "events",
           "events dropped so far: 'hub' (before any backend) and each backend's own queue, by "
           f"name (cumulative, as esper_telemetry_events_dropped_total{{backend}}){when}",
           required=not on_warning),
        _f("lost", DICT, "items",
           "items each backend took but could not keep so far, by name (cumulative, as "
           f"esper_telemetry_backend_lost_total{{backend}}){when}", required=not on_warning),
    )  # fmt: skip


CULL_REASONS: tuple[str, ...] = (
    "controller", "gate_failed", "blend_regression", "probation_timeout", "rollback",
)  # fmt: skip
"""Why a seed is culled: the controller chose to; a gate failed after the longest training; a
blend cost accuracy; probation ran out; the governor rolled back."""

SEED_SUMMARY_FIELDS: tuple[FieldSpec, ...] = (
    _f("stage", STR, "", "SeedStage name"),
    _f("blueprint_id", STR, "", "blueprint of the seed"),
    _f("alpha", FLT, "ratio", "blend weight, 0..1"),
    _f("accuracy_delta", FLT, "percent", "val accuracy change since germination (points)"),
    _f("epochs_in_stage", INT, "epochs", "epochs spent in the current stage"),
    _f(
        "gradient_norm",
        FLT,
        "",
        "L2 norm of the seed's gradients over the number of gradient tensors (not clamped)",
    ),
    _f("gradient_total_norm", FLT, "", "raw L2 norm of all the seed's gradients"),
    _f(
        "gradient_health",
        FLT,
        "ratio",
        "1 - 0.5 x vanishing share - 0.8 x exploding share of its gradient tensors, 0..1",
    ),
    _f("has_vanishing", BOOL, "", "a gradient tensor's norm is below the vanishing threshold"),
    _f(
        "has_exploding",
        BOOL,
        "",
        "a gradient tensor's norm is above the exploding threshold, or not finite",
    ),
)
"""The record kept per live slot in EPOCH_COMPLETED (scope=env) ``seeds``."""

REWARD_COMPONENTS: tuple[str, ...] = (
    "base_acc_delta",
    "bounded_attribution",
    "compute_rent",
    "seed_contribution",
    "counterfactual",
    "blending_warning",
    "probation_warning",
    "fossilize_bonus",
    "cull_penalty",
    "terminal_bonus",
)
"""The named parts a reward is the sum of."""

_REWARD_COMPONENT_MEANINGS = {
    "base_acc_delta": "scaled change in validation accuracy this epoch",
    "bounded_attribution": "share of the accuracy change attributed to seeds, bounded",
    "compute_rent": "penalty for parameters added, against the parameter budget (<= 0)",
    "seed_contribution": "reward for measured seed contribution",
    "counterfactual": "reward from the alpha=0 counterfactual, when available",
    "blending_warning": "penalty while a blending seed hurts accuracy (<= 0)",
    "probation_warning": "penalty while a probationary seed hurts accuracy (<= 0)",
    "fossilize_bonus": "bonus for fossilizing a seed that helped",
    "cull_penalty": "penalty for culling (or for culling a helpful seed)",
    "terminal_bonus": "bonus at the end of the episode for final accuracy",
}

_HEAD_FIELDS = tuple(
    spec
    for head in ACTION_HEADS
    for spec in (
        _f(f"head_{head}_entropy", FLT, "nats", f"mean entropy of the {head} head"),
        _f(
            f"head_{head}_grad_norm",
            FLT,
            "",
            f"gradient L2 norm of the {head} head's parameters (worst minibatch)",
        ),
    )
)

_SNAPSHOT_KIND = _f("kind", STR, "", "which analytics snapshot this is")

CATALOGUE_SPECS: tuple[PayloadSpec, ...] = (
    PayloadSpec(
        ET.TRAINING_STARTED,
        None,
        "A run began; the full configuration it runs with.",
        (
            _f("run_id", STR, "", "unique id of the run"),
            _f("mode", STR, "", "controller: ppo or heuristic"),
            _f("task", STR, "", "task name, e.g. digits or cifar10"),
            _f("task_type", STR, "", "kind of task, e.g. classification"),
            _f("topology", STR, "", "host network topology, e.g. cnn"),
            _f("max_epochs", INT, "epochs", "host epochs per episode"),
            _f("n_envs", INT, "", "parallel environments"),
            _f("n_episodes", INT, "", "episodes requested"),
            _f("seed", INT, "", "random seed of the run"),
            _f("policy_device", STR, "", "device of the policy network", nullable=True),
            _f(
                "env_devices",
                LIST,
                "",
                "device of each env this process steps, in env_id order (all envs in a "
                "single-process run)",
            ),
            _f("env_device_counts", DICT, "", "device -> number of this process's envs on it"),
            _f("env_device_map_strategy", STR, "", "how envs were assigned to devices"),
            _f("host_params", INT, "params", "parameters of one host model before any seed"),
            _f("slot_ids", LIST, "", "the host's slot names"),
            _f("blueprint_ids", LIST, "", "blueprints seeds can be built from"),
            _f("reward_mode", STR, "", "reward function in use"),
            _f("use_telemetry", BOOL, "", "seed telemetry features fed to the controller"),
            _f("telemetry_level", STR, "", "off, minimal, normal or debug"),
            _f("state_dim", INT, "", "observation size of the policy", nullable=True),
            _f("resume_path", STR, "", "checkpoint resumed from", nullable=True),
            _f("lr", FLT, "", "policy learning rate", nullable=True),
            _f("clip_ratio", FLT, "", "PPO clip ratio", nullable=True),
            _f("entropy_coef", FLT, "", "initial entropy bonus coefficient", nullable=True),
            _f(
                "entropy_anneal",
                DICT,
                "",
                "entropy schedule: start and end coefficient, episodes to anneal over; "
                "empty when the coefficient is constant",
            ),
            _f("gpu_preload", BOOL, "", "dataset preloaded onto the env devices"),
            _f("dataloader", STR, "", "how batches are produced"),
            _f("param_budget", INT, "params", "parameter budget for seeds (compute rent)"),
            _f("threads", INT, "threads", "intra-op CPU threads this process uses"),
            _f(
                "threads_source",
                STR,
                "",
                "how they were chosen: auto (cores / local processes) or flag (--threads)",
                allowed=("auto", "flag"),
            ),
            _f("cpu_cores", INT, "cores", "CPU cores this process may run on (its affinity)"),
            _f("world_size", INT, "", "processes (ranks) of the run; 1 without torchrun"),
            _f("rank", INT, "", "this process's rank (0..world_size-1)"),
            _f("local_rank", INT, "", "its rank among the processes of its node"),
            _f("node", STR, "", "host name of its node"),
            _f("node_rank", INT, "", "its node's index in the job (torchrun's GROUP_RANK)"),
            _f(
                "restart_count",
                INT,
                "",
                "times torchrun restarted the job's workers (TORCHELASTIC_RESTART_COUNT)",
            ),
            _f(
                "local_n_envs",
                INT,
                "",
                "envs this rank steps (n_envs is over all ranks); env ids are global",
            ),
            _f(
                "escalate_epochs",
                INT,
                "epochs",
                "epochs an anomaly raises its env (a policy anomaly: every env) to debug; 0 when "
                "nothing escalates (--escalate-epochs 0, a level other than normal, or no debug "
                "events)",
            ),
        ),
    ),
    PayloadSpec(
        ET.TRAINING_COMPLETED,
        None,
        "A run ended (completed, failed or interrupted).",
        (
            _f(
                "status",
                STR,
                "",
                "how the run ended",
                allowed=("completed", "failed", "interrupted"),
            ),
            _f("episodes_completed", INT, "", "episodes finished (by all ranks)"),
            _f(
                "final_accuracy",
                FLT,
                "percent",
                "mean final val accuracy (of all ranks' envs)",
                nullable=True,
            ),
            _f("wall_time_seconds", FLT, "s", "wall time of the run"),
            _f("seeds_germinated", INT, "", "seeds germinated in the run (in this rank's envs)"),
            _f("seeds_fossilized", INT, "", "seeds fossilized in the run (in this rank's envs)"),
            _f("seeds_culled", INT, "", "seeds culled in the run (in this rank's envs)"),
            _f(
                "error",
                STR,
                "",
                "why a run that did not complete stopped (exception type and message, or "
                "the signal); null when completed",
                nullable=True,
            ),
            _f(
                "lost_ranks",
                LIST,
                "",
                "in a multi-rank run, the ranks this rank found gone (dead) when it stopped; "
                "empty otherwise",
            ),
        ),
    ),
    PayloadSpec(
        ET.EPOCH_COMPLETED,
        "env",
        "One env finished a host epoch.",
        (
            _f("scope", STR, "", "env"),
            ENV_ID,
            INNER_EPOCH,
            _f("train_loss", FLT, "", "mean training loss"),
            _f("train_accuracy", FLT, "percent", "training accuracy"),
            _f("val_loss", FLT, "", "validation loss"),
            _f("val_accuracy", FLT, "percent", "validation accuracy"),
            _f("host_grad_norm", FLT, "", "L2 norm of the host's gradients (last step)"),
            _f(
                "seeds",
                DICT,
                "",
                "slot_id -> picture of the seed in it",
                item_fields=SEED_SUMMARY_FIELDS,
            ),
        ),
    ),
    PayloadSpec(
        ET.EPOCH_COMPLETED,
        "aggregate",
        "All envs of a batch finished a host epoch (means over this process's envs; a rank's "
        "own in a multi-rank run).",
        (
            _f("scope", STR, "", "aggregate"),
            INNER_EPOCH,
            _f("batch", INT, "", "batch index"),
            _f("train_loss", FLT, "", "mean training loss over envs"),
            _f("train_accuracy", FLT, "percent", "mean training accuracy over envs"),
            _f("val_loss", FLT, "", "mean validation loss over envs"),
            _f("val_accuracy", FLT, "percent", "mean validation accuracy over envs"),
            _f("n_envs", INT, "", "envs in the batch"),
            _f("skipped_update", BOOL, "", "an env skipped its optimizer step (non-finite loss)"),
            _f("plateau_detected", BOOL, "", "the signal tracker sees a plateau"),
            _f(
                "epoch_seconds",
                FLT,
                "s",
                "wall time this process took to run the epoch of all its envs (one rank's "
                "epoch time in a multi-rank run)",
            ),
        ),
    ),
    PayloadSpec(
        ET.BATCH_EPOCH_COMPLETED,
        None,
        "A batch of episodes (one per env) ended.",
        (
            BATCH_IDX,
            _f("episodes_completed", INT, "", "episodes finished so far"),
            _f("total_episodes", INT, "", "episodes the run will finish"),
            _f("start_episode", INT, "", "episodes already done when the run started (resume)"),
            _f("requested_episodes", INT, "", "episodes requested on the command line"),
            _f("env_accuracies", LIST, "percent", "final val accuracy of each env"),
            _f("avg_accuracy", FLT, "percent", "mean of env_accuracies"),
            _f("rolling_accuracy", FLT, "percent", "rolling mean of avg_accuracy"),
            _f("avg_reward", FLT, "", "mean episode reward over envs"),
        ),
    ),
    PayloadSpec(
        ET.PPO_UPDATE_COMPLETED,
        None,
        "The policy was updated by PPO: its vital signs.",
        (
            _f("policy_loss", FLT, "", "clipped surrogate loss"),
            _f("value_loss", FLT, "", "value function loss"),
            _f("entropy", FLT, "nats", "mean policy entropy over heads"),
            _f("kl_divergence", FLT, "", "approximate KL between old and new policy"),
            _f("clip_fraction", FLT, "ratio", "fraction of ratios clipped"),
            _f("explained_variance", FLT, "", "explained variance of the value function"),
            _f("lr", FLT, "", "learning rate of the optimizer"),
            _f("entropy_coef", FLT, "", "entropy coefficient after annealing"),
            _f("ratio_mean", FLT, "", "mean probability ratio"),
            _f("ratio_min", FLT, "", "minimum probability ratio"),
            _f("ratio_max", FLT, "", "maximum probability ratio"),
            _f("ratio_std", FLT, "", "standard deviation of the probability ratio"),
            _f("grad_norm", FLT, "", "policy gradient L2 norm before clipping"),
            _f("update_time_ms", FLT, "ms", "wall time of the update"),
            _f("nan_grad_count", INT, "", "layers with non-finite gradients (worst minibatch)"),
            _f("dead_layers", INT, "", "layers with vanishing gradients (worst minibatch)"),
            _f("exploding_layers", INT, "", "layers with exploding gradients (worst minibatch)"),
            _f("layer_gradient_health", FLT, "ratio", "mean gradient health of its layers, 0..1"),
            _f("layer_gradient_health_by_layer", DICT, "", "layer name -> gradient health 0..1"),
            _f("entropy_collapsed", BOOL, "", "entropy fell below the collapse threshold"),
            _f(
                "inner_epoch",
                INT,
                "epochs",
                "here, the episode's length that the rollout covered (elsewhere inner_epoch is "
                "the epoch within the episode)",
            ),
            _f("batch", INT, "", "batch index"),
            _f("train_steps", INT, "", "optimizer steps taken in this update"),
            _f("early_stop_epoch", INT, "", "PPO epoch stopped early by KL", nullable=True),
            _f("avg_accuracy", FLT, "percent", "mean final accuracy of the batch"),
            _f("avg_reward", FLT, "", "mean episode reward of the batch"),
            _f("rolling_avg_accuracy", FLT, "percent", "rolling mean accuracy"),
            *_HEAD_FIELDS,
        ),
    ),
    PayloadSpec(
        ET.REWARD_COMPUTED,
        None,
        "The reward of one env's decision, and its parts.",
        (
            ENV_ID,
            _f("episode", INT, "", "episode index"),
            _f("epoch", INT, "epochs", "epoch within the episode"),
            _f("action", STR, "", "op taken (Op name)"),
            _f("action_success", BOOL, "", "the op could be carried out"),
            _f("total_reward", FLT, "", "sum of the components"),
            _f("val_acc", FLT, "percent", "validation accuracy after the epoch"),
            _f("acc_delta", FLT, "percent", "change in validation accuracy"),
            _f("param_ratio", FLT, "ratio", "seed parameters over the parameter budget"),
            _f("seed_stage", STR, "", "stage of the acted-on slot's seed", nullable=True),
            *(_f(c, FLT, "", _REWARD_COMPONENT_MEANINGS[c]) for c in REWARD_COMPONENTS),
        ),
    ),
    PayloadSpec(
        ET.SEED_GERMINATED,
        None,
        "A seed was created in a slot.",
        (*SEED_FIELDS, _f("params", INT, "params", "trainable parameters of the seed")),
    ),
    PayloadSpec(
        ET.SEED_STAGE_CHANGED,
        None,
        "A seed moved to another lifecycle stage.",
        (
            *SEED_FIELDS,
            _f("from_stage", STR, "", "SeedStage name before"),
            _f("to_stage", STR, "", "SeedStage name after"),
            _f("accuracy_delta", FLT, "percent", "val accuracy change since germination"),
            _f("counterfactual", FLT, "percent", "last alpha=0 contribution", nullable=True),
        ),
    ),
    PayloadSpec(
        ET.SEED_GATE_EVALUATED,
        None,
        "A quality gate was evaluated for a seed.",
        (
            *SEED_FIELDS,
            _f("gate", STR, "", "gate name (G1..G3)"),
            _f("passed", BOOL, "", "every check passed"),
            _f("target_stage", STR, "", "stage the gate guards"),
            _f("checks_passed", LIST, "", "names of checks that passed"),
            _f("checks_failed", LIST, "", "names of checks that failed"),
        ),
    ),
    PayloadSpec(
        ET.SEED_FOSSILIZED,
        None,
        "A seed was made permanent.",
        (
            *SEED_FIELDS,
            _f("improvement", FLT, "percent", "val accuracy change since germination"),
            _f("blending_delta", FLT, "percent", "val accuracy change while blending"),
            _f("counterfactual", FLT, "percent", "last alpha=0 contribution", nullable=True),
            _f("params_added", INT, "params", "parameters added to the host"),
        ),
    ),
    PayloadSpec(
        ET.SEED_CULLED,
        None,
        "A seed was removed.",
        (
            *SEED_FIELDS,
            _f("reason", STR, "", "why it was culled", allowed=CULL_REASONS),
            _f("auto_culled", BOOL, "", "culled by the system rather than by the controller"),
            _f("improvement", FLT, "percent", "val accuracy change since germination"),
            _f("blending_delta", FLT, "percent", "val accuracy change while blending"),
            _f("counterfactual", FLT, "percent", "last alpha=0 contribution", nullable=True),
        ),
    ),
    PayloadSpec(
        ET.COUNTERFACTUAL_COMPUTED,
        None,
        "The alpha=0 baseline of a seed was measured, or could not be.",
        (
            ENV_ID,
            _f("slot_id", STR, "", "slot of the seed"),
            _f("available", BOOL, "", "a baseline was measured"),
            _f(
                "reason",
                STR,
                "",
                "why unavailable (null when measured)",
                nullable=True,
                allowed=("not_blended", "missing_baseline"),
            ),
            _f("real_accuracy", FLT, "percent", "val accuracy with the seed", nullable=True),
            _f("baseline_accuracy", FLT, "percent", "val accuracy at alpha=0", nullable=True),
            _f("contribution", FLT, "percent", "real minus baseline", nullable=True),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "last_action",
        "The decision an env's controller just took (debug level).",
        (
            _SNAPSHOT_KIND,
            ENV_ID,
            _f("epoch", INT, "epochs", "epoch within the episode"),
            _f("op", STR, "", "Op name"),
            _f("slot_id", STR, "", "slot chosen"),
            _f("blueprint_id", STR, "", "blueprint chosen"),
            _f("blend_id", STR, "", "blend mode chosen"),
            _f("op_masked", BOOL, "", "the op head had actions masked"),
            _f("slot_masked", BOOL, "", "the slot head had actions masked"),
            _f("blueprint_masked", BOOL, "", "the blueprint head had actions masked"),
            _f("blend_masked", BOOL, "", "the blend head had actions masked"),
            _f("action_success", BOOL, "", "the action could be carried out"),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "action_distribution",
        "Counts of ops taken in a batch.",
        (
            _SNAPSHOT_KIND,
            BATCH_IDX,
            _f("episodes_completed", INT, "", "episodes finished so far"),
            _f("action_counts", DICT, "", "op name -> times taken"),
            _f("success_counts", DICT, "", "op name -> times carried out"),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "throughput",
        "How fast an env ran in a batch.",
        (
            _SNAPSHOT_KIND,
            ENV_ID,
            BATCH_IDX,
            _f("episodes_completed", INT, "", "episodes finished so far"),
            _f("step_time_ms", FLT, "ms", "mean wall time of one env step (one host epoch)"),
            _f(
                "fps",
                FLT,
                "samples/s",
                "training samples processed per second (when known)",
                nullable=True,
            ),
            _f("dataloader_wait_ms", FLT, "ms", "mean time per step waiting for data"),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "collectives",
        "One rank's collective calls in a batch of a multi-rank run, and how long each took "
        "(mostly waiting for the slowest rank).",
        (
            _SNAPSHOT_KIND,
            BATCH_IDX,
            _f("rank", INT, "", "the rank that waited"),
            _f("calls", INT, "", "collective calls in the batch"),
            _f("wait_seconds_total", FLT, "s", "time spent in them"),
            _f("wait_seconds_max", FLT, "s", "the longest one"),
            _f(
                "wait_seconds",
                DICT,
                "s",
                "operation (all_reduce_gradients, all_reduce_scalar, all_gather_batch, "
                "broadcast) -> the seconds of each call, in order",
            ),
            _f(
                "policy_digest",
                STR,
                "",
                "hash of the policy's weights after the batch's update: the same on every "
                "rank while the replicas agree",
            ),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "reward_summary",
        "An env's reward components summed over its episode.",
        (
            _SNAPSHOT_KIND,
            ENV_ID,
            BATCH_IDX,
            _f("summary", DICT, "", "reward component -> sum over the episode"),
        ),
    ),
    PayloadSpec(
        ET.ANALYTICS_SNAPSHOT,
        "mask_hit_rates",
        "How often action masks removed choices, per head, in a batch.",
        (
            _SNAPSHOT_KIND,
            BATCH_IDX,
            _f("episodes_completed", INT, "", "episodes finished so far"),
            _f("mask_hits", DICT, "", "head -> decisions where the mask removed a choice"),
            _f("mask_total", DICT, "", "head -> decisions taken"),
        ),
    ),
    PayloadSpec(
        ET.GOVERNOR_ROLLBACK,
        None,
        "The governor restored an env's last good state.",
        (
            ENV_ID,
            _f("device", STR, "", "torch device of the env"),
            _f(
                "reason",
                STR,
                "",
                "what made the governor panic (manual: no panic)",
                allowed=("nan_loss", "inf_loss", "divergence", "manual"),
            ),
            _f("loss_at_panic", FLT, "", "the loss that triggered it"),
            _f("loss_threshold", FLT, "", "the divergence threshold at the time"),
            _f("consecutive_panics", INT, "", "panics in a row, this one included"),
            _f("seeds_culled", INT, "", "live seeds culled by the rollback"),
        ),
    ),
    PayloadSpec(
        ET.GRADIENT_ANOMALY,
        None,
        "Gradients exploded, vanished or went non-finite; or (kind loss_spike) a host's training "
        "loss rose far above its recent history while staying below the governor's panic.",
        (
            _f("scope", STR, "", "whose gradients", allowed=("policy", "host", "seed")),
            _f(
                "kind",
                STR,
                "",
                "which rule fired",
                allowed=("exploding", "vanishing", "nan", "loss_spike"),
            ),
            _f("env_id", INT, "", "environment index (null for the policy)", nullable=True),
            _f("slot_id", STR, "", "slot (seed scope only)", nullable=True),
            _f(
                "value",
                FLT,
                "",
                "the gradient norm the rule judged (largest, smallest, or the total for nan); "
                "for loss_spike, the epoch's training loss",
            ),
            _f(
                "threshold",
                FLT,
                "",
                "the threshold it crossed (null for nan: no limit applies); for loss_spike, the "
                "top of the loss's band: the median of the last three losses, times the larger "
                "of 1.5 and exp(5 scaled MADs of the log-steps between epochs)",
                nullable=True,
            ),
        ),
    ),
    PayloadSpec(
        ET.PLATEAU_DETECTED,
        None,
        "An env's validation accuracy stopped improving.",
        (
            ENV_ID,
            INNER_EPOCH,
            _f("best_accuracy", FLT, "percent", "best val accuracy so far"),
            _f("epochs_without_improvement", INT, "epochs", "epochs since the best"),
        ),
    ),
    PayloadSpec(
        ET.CHECKPOINT_SAVED,
        None,
        "A checkpoint was written.",
        (
            _f("path", STR, "", "file written"),
            _f("episodes_completed", INT, "", "episodes finished at save time"),
            _f("size_bytes", INT, "bytes", "file size"),
        ),
    ),
    PayloadSpec(
        ET.CHECKPOINT_LOADED,
        None,
        "A checkpoint was read (resume).",
        (
            _f("path", STR, "", "file read"),
            _f("episodes_completed", INT, "", "episodes finished when it was saved"),
            _f(
                "differs",
                LIST,
                "",
                "how this run differs from the one that saved it (``n_envs 1 -> 2``; the "
                "policy fits, the history is another run's); empty when it does not",
            ),
        ),
    ),
    PayloadSpec(
        ET.TELEMETRY_WARNING,
        None,
        "The telemetry system reports on itself.",
        (
            _f(
                "reason",
                STR,
                "",
                "what happened to the telemetry",
                allowed=("telemetry_disabled", "backend_failed", "events_dropped", "events_lost"),
            ),
            _f("detail", STR, "", "what happened, in words"),
            *_counts(on_warning=True),
        ),
    ),
    PayloadSpec(
        ET.TELEMETRY_CLOSED,
        None,
        "The telemetry's own account of the run, written as its last event before the final "
        "scrape: what each backend kept of every event before this one.",
        (
            _f("emitted", INT, "events", "events emitted to the hub before this one"),
            _f("delivered", DICT, "events", "events each backend delivered, by name"),
            _f("failed", DICT, "events", "events each backend failed to write, by name"),
            *_counts(on_warning=False),
            _f("complete", BOOL, "", "every event so far was kept by every backend"),
        ),
    ),
    PayloadSpec(
        ET.TELEMETRY_LEVEL_CHANGED,
        None,
        "An env's telemetry (or the whole run's) went to debug because something went wrong "
        "there, or came back; two bracket each window of detail.",
        (
            _f(
                "env_id", INT, "", "the env escalated; null for every env of the run", nullable=True
            ),
            _f("from_level", STR, "", "level before", allowed=_LEVELS),
            _f("to_level", STR, "", "level after", allowed=_LEVELS),
            _f(
                "reason",
                STR,
                "",
                "the trigger: its event type and kind, e.g. "
                "GRADIENT_ANOMALY:host:exploding, GOVERNOR_ROLLBACK:nan_loss",
            ),
            _f(
                "trigger_event_id",
                STR,
                "",
                "event_id of the trigger (null when it has no event on this rank)",
                nullable=True,
            ),
            _f("until_epoch", INT, "epochs", "the last epoch of the episode at debug"),
        ),
    ),
)

CATALOGUE: dict[tuple[TelemetryEventType, str | None], PayloadSpec] = {
    spec.key: spec for spec in CATALOGUE_SPECS
}
"""(event type, variant) -> payload spec. The single source of truth for payloads."""

payload_fits = compile_checks(CATALOGUE, DISCRIMINATORS)
"""``payload_fits(event_type, data)``: True only when the payload certainly fits (compiled)."""
