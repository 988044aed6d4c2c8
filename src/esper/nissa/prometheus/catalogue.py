"""The Prometheus metric catalogue: every family the exporter serves, declared once.

Each entry names its type, labels, unit and the event field it is fed from (``source``, as
``EVENT_TYPE[:variant].field``). The exporter registers exactly these families; the tests
check every source against the payload catalogue, and ``docs/METRICS.md`` is rendered from
this list.

Units follow Prometheus conventions: base units (seconds, bytes), counters end in
``_total``, and accuracies and other ratios are 0..1 (events carry accuracy in percent; the
exporter divides by 100).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class MetricKind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


class Update(StrEnum):
    """How the exporter updates a metric from its ``source`` event, with no code of its own.
    Labels take the values of the payload fields of the same names."""

    SET = "set"
    """gauge = the field's value (a null value leaves the gauge alone)"""
    PERCENT = "percent"
    """gauge = the field / 100 (a percentage as a 0..1 ratio)"""
    FLAG = "flag"
    """gauge = 1 when the field is true, else 0"""
    MS = "ms"
    """histogram observes the field / 1000 (milliseconds as seconds)"""
    COUNT = "count"
    """counter + 1 per event"""


class MetricDetail(StrEnum):
    """How much per-env detail ``/metrics`` serves (``--metrics-detail``). The JSONL keeps
    every env's events at both levels."""

    ENV = "env"
    """Every per-env family by ``env_id``: series grow with the envs a rank steps."""
    RANK = "rank"
    """Per-env families folded over the rank's envs (see ``Fold``): series do not grow with
    the envs. For big jobs (docs/SCALING.md)."""


class Fold(StrEnum):
    """How a family labelled ``env_id`` is served at ``MetricDetail.RANK``."""

    SUM = "sum"
    """The ``env_id`` label dropped and the envs' series summed: exactly what
    ``sum without (env_id)`` gives at env detail (counters, histograms, counts of envs)."""
    STATS = "stats"
    """The ``env_id`` label dropped and three series labelled ``stat``: the ``mean``, ``min``
    and ``max`` of the envs' current values (gauges), exactly what ``avg``, ``min`` and
    ``max without (env_id)`` give at env detail (a NaN env makes the mean NaN; min and max
    skip it unless every env is NaN)."""


FOLD_STATS = ("mean", "min", "max")
"""The ``stat`` label's values of a family folded with ``Fold.STATS``."""

_SOURCE = re.compile(r"^([A-Z_]+)(?::(\w+))?(?:\.(\w+)| \(counts the events\))$")


@dataclass(frozen=True, slots=True)
class Derived:
    """A metric's update as the exporter applies it: from which event, which field."""

    event_type: str
    variant: str | None
    field: str | None
    """None: the event itself is counted."""
    update: Update


def derived(spec: MetricSpec) -> Derived:
    """What ``spec.update`` applies to, parsed from its ``source``; ValueError if it cannot
    be (such a metric needs an update of its own)."""
    m = _SOURCE.match(spec.source)
    if spec.update is None or m is None:
        raise ValueError(f"{spec.name}: source {spec.source!r} does not name one event field")
    return Derived(m.group(1), m.group(2), m.group(3), spec.update)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    source: str = ""
    buckets: tuple[float, ...] = ()
    update: Update | None = None
    """How the exporter derives it from ``source`` (see ``Update``); None: by code of its
    own, for metrics that fold several fields or keep state."""
    fold: Fold | None = None
    """How it is served at ``MetricDetail.RANK`` when labelled ``env_id`` (see
    ``fold_of``); None: counters and histograms ``SUM``, gauges ``STATS``."""

    @property
    def family(self) -> str:
        """The name prometheus_client registers (counters without ``_total``)."""
        if self.kind is MetricKind.COUNTER:
            return self.name.removesuffix("_total")
        return self.name


G, C, H = MetricKind.GAUGE, MetricKind.COUNTER, MetricKind.HISTOGRAM
SET, PERCENT, FLAG, MS, COUNT = Update.SET, Update.PERCENT, Update.FLAG, Update.MS, Update.COUNT

# PPO updates take tens of milliseconds on a CPU and up to seconds for large rollouts.
UPDATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One env step is one host epoch: ~0.05 s for the digits host, minutes for a large model.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Waiting for a batch: microseconds when preloaded, tens of milliseconds from disk.
WAIT_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0)

# A collective takes microseconds when the ranks arrive together, up to an epoch when one lags.
COLLECTIVE_BUCKETS = (1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)

PPO = "PPO_UPDATE_COMPLETED"
EPOCH_ENV = "EPOCH_COMPLETED:env"
THROUGHPUT = "ANALYTICS_SNAPSHOT:throughput"
MASKS = "ANALYTICS_SNAPSHOT:mask_hit_rates"
BATCH = "BATCH_EPOCH_COMPLETED"

CUDA_STATS = "torch.cuda.memory_stats(device) at scrape time"
"""The source of the per-process CUDA memory metrics (host-side allocator counts, no sync)."""
CUDA_LABELS = ("device", "gpu", "UUID")
"""``device`` is torch's name (cuda:0); ``gpu`` and ``UUID`` are dcgm-exporter's labels for the
same GPU, so the trainer's series join with DCGM's (``on (UUID)`` always matches; ``gpu`` is
the NVML index when CUDA_VISIBLE_DEVICES lists indices, else torch's index)."""

EVENT_COUNT = "(counts the events)"
EVENT_TIME = "(the event's timestamp)"
"""Sources that read no payload field: ``EVENT_TYPE[:variant] (counts the events)`` and
``EVENT_TYPE[:variant] (the event's timestamp)``."""

HUB_STATS = "hub stats at scrape time"
"""The source of the metrics read from the hub's own counts (not from an event field)."""

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("esper_run_info", G, "The run being trained (value 1).",
               ("run_id", "task", "mode", "reward_mode"), "", "TRAINING_STARTED.run_id"),
    MetricSpec("esper_telemetry_events_total", C, "Telemetry events seen by the exporter.",
               ("event_type",), "events", "event_type"),
    MetricSpec("esper_telemetry_events_dropped_total", C,
               "Telemetry events dropped under overload, per backend ('hub': before any).",
               ("backend",), "events", f"{HUB_STATS}: HubStats.dropped, BackendStats.dropped"),
    MetricSpec("esper_telemetry_backend_lost_total", C,
               "Items a backend took but could not keep: JSONL lines on a full disk, spans a "
               "dead OTLP collector never received.", ("backend",), "items",
               f"{HUB_STATS}: BackendStats.lost"),
    MetricSpec("esper_ppo_updates_total", C, "PPO updates done (one per event).", (), "updates",
               f"{PPO} {EVENT_COUNT}", update=COUNT),
    MetricSpec("esper_ppo_update_duration_seconds", H, "Wall time of a PPO update.", (), "s",
               f"{PPO}.update_time_ms", UPDATE_BUCKETS, update=MS),
    MetricSpec("esper_ppo_grad_norm", G, "Policy gradient L2 norm before clipping.", (), "",
               f"{PPO}.grad_norm", update=SET),
    MetricSpec("esper_ppo_policy_loss", G, "PPO clipped surrogate loss.", (), "",
               f"{PPO}.policy_loss", update=SET),
    MetricSpec("esper_ppo_value_loss", G, "Value function loss.", (), "",
               f"{PPO}.value_loss", update=SET),
    MetricSpec("esper_ppo_entropy", G, "Mean policy entropy (sum over heads).", (), "nats",
               f"{PPO}.entropy", update=SET),
    MetricSpec("esper_ppo_entropy_collapsed", G, "1 when entropy fell below its collapse level.",
               (), "", f"{PPO}.entropy_collapsed", update=FLAG),
    MetricSpec("esper_ppo_kl_divergence", G, "Approximate KL of the update.", (), "",
               f"{PPO}.kl_divergence", update=SET),
    MetricSpec("esper_ppo_clip_fraction", G, "Fraction of ratios clipped.", (), "ratio",
               f"{PPO}.clip_fraction", update=SET),
    MetricSpec("esper_ppo_explained_variance", G, "Explained variance of the value function.",
               (), "", f"{PPO}.explained_variance", update=SET),
    MetricSpec("esper_ppo_learning_rate", G, "Policy learning rate.", (), "",
               f"{PPO}.lr", update=SET),
    MetricSpec("esper_ppo_head_entropy", G, "Entropy of one action head.", ("head",), "nats",
               f"{PPO}.head_{{head}}_entropy"),
    MetricSpec("esper_ppo_head_grad_norm", G, "Gradient norm of one action head.", ("head",), "",
               f"{PPO}.head_{{head}}_grad_norm"),
    MetricSpec("esper_env_step_duration_seconds", H, "Wall time of one env step (a host epoch).",
               ("env_id",), "s", f"{THROUGHPUT}.step_time_ms", STEP_BUCKETS, update=MS),
    MetricSpec("esper_dataloader_wait_seconds", H, "Time per env step spent waiting for data.",
               ("env_id",), "s", f"{THROUGHPUT}.dataloader_wait_ms", WAIT_BUCKETS, update=MS),
    MetricSpec("esper_env_fps", G, "Training samples per second of one env.", ("env_id",),
               "samples/s", f"{THROUGHPUT}.fps", update=SET),
    MetricSpec("esper_action_mask_hit_ratio", G,
               "Share of the last batch's decisions where the mask removed a choice.", ("head",),
               "ratio", f"{MASKS}.mask_hits"),
    MetricSpec("esper_action_mask_hits_total", C, "Decisions where the mask removed a choice.",
               ("head",), "decisions", f"{MASKS}.mask_hits"),
    MetricSpec("esper_action_mask_checks_total", C, "Decisions taken (mask checks).", ("head",),
               "decisions", f"{MASKS}.mask_total"),
    MetricSpec("esper_actions_total", C, "Controller ops taken, by whether they succeeded.",
               ("op", "success"), "actions",
               "ANALYTICS_SNAPSHOT:action_distribution.action_counts"),
    MetricSpec("esper_episodes_completed_total", C, "Episodes finished.", (), "episodes",
               f"{BATCH}.episodes_completed"),
    MetricSpec("esper_batch_avg_accuracy", G, "Mean final validation accuracy of the last batch.",
               (), "ratio", f"{BATCH}.avg_accuracy", update=PERCENT),
    MetricSpec("esper_batch_rolling_accuracy", G, "Rolling mean of batch accuracy.", (), "ratio",
               f"{BATCH}.rolling_accuracy", update=PERCENT),
    MetricSpec("esper_batch_avg_reward", G, "Mean episode reward of the last batch.", (), "",
               f"{BATCH}.avg_reward", update=SET),
    MetricSpec("esper_env_val_accuracy", G, "Validation accuracy of one env.", ("env_id",),
               "ratio", f"{EPOCH_ENV}.val_accuracy", update=PERCENT),
    MetricSpec("esper_env_val_loss", G, "Validation loss of one env.", ("env_id",), "",
               f"{EPOCH_ENV}.val_loss", update=SET),
    MetricSpec("esper_env_epochs_total", C, "Host epochs completed by one env.", ("env_id",),
               "epochs", f"{EPOCH_ENV} {EVENT_COUNT}", update=COUNT),
    MetricSpec("esper_last_progress_timestamp_seconds", G,
               "Unix time of the last completed host epoch (any env).", (), "s",
               f"{EPOCH_ENV} {EVENT_TIME}"),
    MetricSpec("esper_rank_epoch_seconds", G,
               "Wall time of this process's last host epoch over all its envs (under torchrun: "
               "one rank's epoch time, labelled by its scrape target's rank).", (), "s",
               "EPOCH_COMPLETED:aggregate.epoch_seconds", update=SET),
    MetricSpec("esper_collective_wait_seconds", H,
               "Time one collective call took on this rank (mostly waiting for the slowest "
               "rank), by operation.", ("op",), "s",
               "ANALYTICS_SNAPSHOT:collectives.wait_seconds", COLLECTIVE_BUCKETS),
    MetricSpec("esper_host_grad_norm", G, "Host gradient L2 norm (worst step of the epoch).",
               ("env_id",), "", f"{EPOCH_ENV}.host_grad_norm", update=SET),
    MetricSpec("esper_seed_germinated_total", C, "Seeds germinated.", ("slot_id", "blueprint_id"),
               "seeds", "SEED_GERMINATED.blueprint_id", update=COUNT),
    MetricSpec("esper_seed_fossilized_total", C, "Seeds fossilized.", ("slot_id", "blueprint_id"),
               "seeds", "SEED_FOSSILIZED.blueprint_id", update=COUNT),
    MetricSpec("esper_seed_culled_total", C, "Seeds culled, by reason.",
               ("slot_id", "blueprint_id", "reason"), "seeds", "SEED_CULLED.reason", update=COUNT),
    MetricSpec("esper_seed_stage_transitions_total", C, "Seed stage transitions.",
               ("from_stage", "to_stage"), "transitions",
               "SEED_STAGE_CHANGED.to_stage", update=COUNT),
    MetricSpec("esper_seeds", G, "Seeds currently in each stage, over all envs and slots.",
               ("stage",), "seeds", f"{EPOCH_ENV}.seeds"),
    MetricSpec("esper_seed_alpha", G, "Blend weight of the seed in a slot.", ("env_id", "slot_id"),
               "ratio", f"{EPOCH_ENV}.seeds"),
    MetricSpec("esper_seed_gradient_norm", G,
               "Gradient norm of the seed in a slot over its number of gradient tensors.",
               ("env_id", "slot_id"), "", f"{EPOCH_ENV}.seeds"),
    MetricSpec("esper_seed_gradient_total_norm", G,
               "Raw L2 norm of all the gradients of the seed in a slot.",
               ("env_id", "slot_id"), "", f"{EPOCH_ENV}.seeds"),
    MetricSpec("esper_seed_gradient_health", G, "Gradient health (0..1) of the seed in a slot.",
               ("env_id", "slot_id"), "ratio", f"{EPOCH_ENV}.seeds"),
    MetricSpec("esper_gradient_anomalies_total", C, "Gradient anomalies.", ("scope", "kind"),
               "anomalies", "GRADIENT_ANOMALY.kind", update=COUNT),
    MetricSpec("esper_governor_rollbacks_total", C, "Governor rollbacks.", ("env_id", "reason"),
               "rollbacks", "GOVERNOR_ROLLBACK.reason", update=COUNT),
    MetricSpec("esper_env_telemetry_escalated", G,
               "1 while the env's telemetry runs at debug after something went wrong in it "
               "(escalation; a window over every env sets every env seen), else 0.",
               ("env_id",), "", "TELEMETRY_LEVEL_CHANGED.to_level", fold=Fold.SUM),
    MetricSpec("esper_reward_component", G,
               "Reward component summed over an episode, mean over the batch's envs.",
               ("component",), "", "ANALYTICS_SNAPSHOT:reward_summary.summary"),
    MetricSpec("esper_counterfactual_unavailable_total", C,
               "Counterfactual baselines that could not be measured.", ("reason",), "",
               "COUNTERFACTUAL_COMPUTED.reason"),
    MetricSpec("esper_cuda_memory_allocated_bytes", G,
               "CUDA memory this process holds in tensors (read at scrape; CUDA only).",
               CUDA_LABELS, "bytes", f"{CUDA_STATS}: allocated_bytes.all.current"),
    MetricSpec("esper_cuda_memory_reserved_bytes", G,
               "CUDA memory this process's caching allocator reserved (read at scrape; CUDA "
               "only).", CUDA_LABELS, "bytes", f"{CUDA_STATS}: reserved_bytes.all.current"),
    MetricSpec("esper_cuda_memory_peak_allocated_bytes", G,
               "Most CUDA memory this process held in tensors at once since it started (read "
               "at scrape; CUDA only).", CUDA_LABELS, "bytes",
               f"{CUDA_STATS}: allocated_bytes.all.peak"),
    MetricSpec("esper_cuda_oom_total", C,
               "CUDA out-of-memory errors the caching allocator raised in this process (read "
               "at scrape; CUDA only).", CUDA_LABELS, "errors", f"{CUDA_STATS}: num_ooms"),
)  # fmt: skip

METRICS_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}


def fold_of(spec: MetricSpec) -> Fold | None:
    """How ``spec`` folds at ``MetricDetail.RANK``; None for a family without ``env_id``."""
    if "env_id" not in spec.labels:
        return None
    if spec.fold is not None:
        return spec.fold
    return Fold.STATS if spec.kind is MetricKind.GAUGE else Fold.SUM


def served_labels(spec: MetricSpec, detail: MetricDetail) -> tuple[str, ...]:
    """The labels ``/metrics`` gives ``spec``'s series at ``detail``."""
    fold = fold_of(spec) if detail is MetricDetail.RANK else None
    if fold is None:
        return spec.labels
    kept = tuple(label for label in spec.labels if label != "env_id")
    return (*kept, "stat") if fold is Fold.STATS else kept


def served_help(spec: MetricSpec, detail: MetricDetail) -> str:
    """``spec``'s help text at ``detail``: at rank detail a folded family says how."""
    fold = fold_of(spec) if detail is MetricDetail.RANK else None
    if fold is Fold.STATS:
        return f"{spec.help} Folded over this rank's envs: stat is mean, min or max."
    if fold is Fold.SUM:
        return f"{spec.help} Folded over this rank's envs: their sum."
    return spec.help


def render_metrics_markdown() -> str:
    """The whole of ``docs/METRICS.md``, generated from the metric catalogue."""
    out = [
        "# Prometheus metrics",
        "",
        "Generated from `esper.nissa` (the metric catalogue) by `esper docs`; do not edit.",
        "A test fails when this file differs from what the catalogue generates.",
        "",
        "Served on `/metrics` by the training process (`--metrics-port`). Accuracies and other",
        "ratios are 0..1; durations are seconds. Sources are `EVENT_TYPE[:variant].field`.",
        "",
        "The update column says how the exporter derives a metric from its source, with no",
        "code of its own: `set` (the value), `percent` (/ 100), `flag` (1 or 0), `ms` (observed",
        "/ 1000), `count` (+1 per event); `code` marks those that fold several fields or keep",
        "state.",
        "",
        "The last column is what a family labelled `env_id` becomes at `--metrics-detail rank`",
        "(for big jobs; the default, `env`, serves every env): `sum` drops `env_id` and sums",
        "the rank's envs (exactly `sum without (env_id)` at env detail); `stats` drops `env_id`",
        "and serves three series labelled `stat`: the `mean`, `min` and `max` of the envs'",
        "current values (as PromQL's `avg`, `min`, `max without (env_id)`: a NaN env makes the",
        "mean NaN, and min and max skip it). Every other family is the same at both levels.",
        "",
        "| name | type | labels | unit | source | update | meaning | at rank detail |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels)
        source = f"`{m.source}`" if m.source else "(read at scrape)"
        how = m.update.value if m.update is not None else "code"
        fold = fold_of(m)
        kept = ", ".join(f"`{label}`" for label in served_labels(m, MetricDetail.RANK))
        folded = "" if fold is None else f"{fold.value}: {kept or 'no labels'}"
        out.append(
            f"| `{m.name}` | {m.kind.value} | {labels} | {m.unit} | {source} | {how} | {m.help} "
            f"| {folded} |"
        )
    return "\n".join(out) + "\n"
