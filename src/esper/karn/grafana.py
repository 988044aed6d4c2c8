"""Grafana dashboards, generated as code with Grafana's own SDK (grafana-foundation-sdk).

``esper dashboards`` writes ``dashboards/*.json``; a test fails when the checked-in files
differ from what this module generates, and another evaluates every panel's query against a
real Prometheus that scraped a real run. Panels read the Prometheus datasource provisioned
with uid ``esper-prometheus``; the trace panel reads Tempo (``esper-tempo``).

Template variables: ``run`` (from ``esper_run_info``), ``instance`` (the scrape targets of the
chosen runs), ``rank`` (the ranks of a multi-process run, from the target label ``rank``;
series of a single-process run have none and always match) and ``env``; every query filters
on them.

Every panel reads series that both ``--metrics-detail`` levels serve: a per-env gauge is
``{env_id}`` at env detail and ``{stat="mean|min|max"}`` at rank detail, and one query (with
``env_id=~"$env"``, which matches a series without the label when "All" is chosen) draws
either; a summed family simply has no ``env_id`` at rank detail. The run row reads the
run-level recording rules (one series per run, whatever its ranks and envs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pq
from grafana_foundation_sdk.builders import stat, table, tempo
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DashboardLink as DashboardLinkModel
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    VariableRefresh,
)

PROMETHEUS_UID = "esper-prometheus"
TEMPO_UID = "esper-tempo"
PROM = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
TEMPO = DataSourceRef(type_val="tempo", uid=TEMPO_UID)

I = 'instance=~"$instance", rank=~"$rank"'  # noqa: E741 - the filter every query carries
IE = f'{I}, env_id=~"$env"'
RATE = "$__rate_interval"
RUN = 'run_id=~"$run"'  # the run-level recording rules (esper-runs) keep job and run_id only

ENV = "env {{env_id}}{{stat}}"
"""The legend of a per-env gauge: ``env 3`` at env detail, ``env mean`` (``min``, ``max``) at
``--metrics-detail rank``, where the rank's envs are folded and ``env_id`` is gone."""
FOLDED = (
    " At --metrics-detail rank the rank's envs are summed into one series (no env_id); the "
    "JSONL keeps each env."
)
"""The description of a panel of a summed per-env family (counters, histograms)."""


def _query(expr: str, legend: str = "", ref: str = "A") -> pq.Dataquery:
    return pq.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(PROM)


def _targets(panel: Any, queries: list[tuple[str, str]]) -> Any:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


def _ts(
    title: str, unit: str, queries: list[tuple[str, str]], desc: str = "", width: int = 12
) -> ts.Panel:
    panel = (
        ts.Panel().title(title).unit(unit).datasource(PROM).height(8).span(width)
        .description(desc).line_width(1).fill_opacity(10)
    )  # fmt: skip
    return cast(ts.Panel, _targets(panel, queries))


def _stat(title: str, unit: str, queries: list[tuple[str, str]], desc: str = "") -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(PROM).height(4).span(6)
    return cast(stat.Panel, _targets(panel.description(desc), queries))


def _variable(name: str, label: str, query: str) -> db.QueryVariable:
    """A multi-select query variable whose "All" matches everything."""
    return (
        db.QueryVariable(name).label(label).datasource(PROM).query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True)
        .all_value(".*")
    )  # fmt: skip


def _variables(dashboard: db.Dashboard) -> db.Dashboard:
    """run -> instance (the trainers of those runs) -> env, each filtering the next."""
    return (
        dashboard.with_variable(_variable("run", "Run", "label_values(esper_run_info, run_id)"))
        .with_variable(_variable(
            "instance", "Trainer", 'label_values(esper_run_info{run_id=~"$run"}, instance)'))
        .with_variable(_variable(
            "rank", "Rank", 'label_values(esper_run_info{instance=~"$instance"}, rank)'))
        .with_variable(_variable(
            "env", "Env", 'label_values(esper_env_val_accuracy{instance=~"$instance"}, env_id)'))
    )  # fmt: skip


def _dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    links: list[Builder[DashboardLinkModel]] = [
        db.DashboardLink("Esper dashboards").type(DashboardLinkType.DASHBOARDS).tags(["esper"])
        .as_dropdown(True).include_vars(True).keep_time(True)
    ]  # fmt: skip
    d = (
        db.Dashboard(title).uid(uid).tags(["esper", "generated"]).description(description)
        .refresh("10s").time("now-1h", "now").timezone("browser").editable().links(links)
    )  # fmt: skip
    return _variables(d)


def _escalations(d: db.Dashboard) -> db.Dashboard:
    """Escalation windows as annotations: an env's telemetry at debug after an anomaly."""
    return d.annotation(
        db.AnnotationQuery().name("Escalated telemetry").datasource(PROM).enable(True)
        .icon_color("orange")
        .expr(f"max by (instance, env_id) (esper_env_telemetry_escalated{{{I}}}) > 0")
    )  # fmt: skip


def training_overview() -> db.Dashboard:
    return (
        _escalations(_dashboard("esper-overview", "Esper / Training overview",
                   "Is the run healthy and learning? Accuracy, reward, episodes, seeds, alerts."))
        .with_row(db.Row("Run"))
        .with_panel(_stat("Run", "none",
                          [(f"count by (run_id, mode, task, reward_mode) (esper_run_info{{{I}, run_id=~\"$run\"}})",
                            "{{run_id}} {{mode}} on {{task}} ({{reward_mode}} reward)")],
                          "The runs selected above, by id, controller, task and reward mode."))
        .with_panel(_stat("Episodes completed", "none",
                          [(f"sum(esper_episodes_completed_total{{{I}}})", "episodes")]))
        .with_panel(_stat("Batch accuracy", "percentunit",
                          [(f"avg(esper_batch_avg_accuracy{{{I}}})", "accuracy")]))
        .with_panel(_stat("Seeds alive", "none",
                          [(f'sum(esper_seeds{{{I}, stage=~"GERMINATED|TRAINING|BLENDING|PROBATIONARY"}})',
                            "alive")]))
        .with_panel(_stat("Governor rollbacks", "none",
                          [(f"sum(esper_governor_rollbacks_total{{{I}}})", "rollbacks")],
                          "Needs a run with rollbacks (e.g. --inject-fault nan-loss@N)."))
        .with_row(db.Row("Whole run (recording rules: one series per run)"))
        .with_panel(_ts("Run validation accuracy: mean and worst env", "percentunit",
                        [(f"esper:run_env_val_accuracy:mean{{{RUN}}}", "{{run_id}} mean"),
                         (f"esper:run_env_val_accuracy:min{{{RUN}}}", "{{run_id}} worst env")],
                        "Over every rank and env of the run, at either --metrics-detail.",
                        width=8))
        .with_panel(_ts("Run validation loss (mean over envs)", "none",
                        [(f"esper:run_env_val_loss:mean{{{RUN}}}", "{{run_id}}")], width=8))
        .with_panel(_ts("Run reward", "none",
                        [(f"esper:run_batch_avg_reward{{{RUN}}}", "{{run_id}}")], width=8))
        .with_panel(_ts("Run anomalies per second by kind", "none",
                        [(f"esper:run_gradient_anomalies:rate5m{{{RUN}}}", "{{run_id}} {{kind}}")],
                        "Needs a run with anomalies.", width=12))
        .with_panel(_ts("Run rollbacks per second", "none",
                        [(f"esper:run_governor_rollbacks:rate5m{{{RUN}}}", "{{run_id}}")],
                        "Needs a run with rollbacks.", width=12))
        .with_row(db.Row("Learning"))
        .with_panel(_ts("Validation accuracy per env", "percentunit",
                        [(f"esper_env_val_accuracy{{{IE}}}", ENV)]))
        .with_panel(_ts("Batch accuracy and reward", "percentunit",
                        [(f"esper_batch_avg_accuracy{{{I}}}", "avg accuracy"),
                         (f"esper_batch_rolling_accuracy{{{I}}}", "rolling accuracy")]))
        .with_panel(_ts("Mean episode reward", "none",
                        [(f"esper_batch_avg_reward{{{I}}}", "reward")]))
        .with_panel(_ts("Reward components (mean over envs)", "none",
                        [(f"avg by (component) (esper_reward_component{{{I}}})",
                          "{{component}}")]))
        .with_panel(_ts("Validation loss per env", "none",
                        [(f"esper_env_val_loss{{{IE}}}", ENV)]))
        .with_panel(_ts("Epochs per minute per env", "none",
                        [(f"rate(esper_env_epochs_total{{{IE}}}[{RATE}]) * 60", "env {{env_id}}")],
                        FOLDED.strip()))
        .with_row(db.Row("Health"))
        .with_panel(_ts("Gradient anomalies", "none",
                        [(f"sum by (scope, kind) (increase(esper_gradient_anomalies_total{{{I}}}[{RATE}]))",
                          "{{scope}} {{kind}}")],
                        "Needs a run with anomalies (e.g. --inject-fault exploding-gradients@N)."))
        .with_panel(_ts("Loss spikes (below the governor's panic)", "none",
                        [(f'sum(increase(esper_gradient_anomalies_total{{kind="loss_spike", {I}}}'
                          f"[{RATE}]))", "loss spikes")],
                        "Needs a run with a spike (e.g. --inject-fault loss-spike@N); each one "
                        "raised its env to debug level (--escalate-epochs)."))
        .with_panel(_ts("Envs recorded at debug after an anomaly", "none",
                        [(f"sum(esper_env_telemetry_escalated{{{I}}})", "escalated envs")],
                        "Escalation (--escalate-epochs): also drawn as annotations. Needs a run "
                        "with an anomaly." + FOLDED))
        .with_panel(_ts("Host gradient norm", "none",
                        [(f"esper_host_grad_norm{{{IE}}}", ENV)]))
        .with_panel(_ts("Firing Esper alerts", "none",
                        [('sum by (alertname) (ALERTS{alertstate="firing", alertname=~"Esper.*", '
                          f"{I}}})", "{{alertname}}")],
                        "Needs a firing alert (a fault-injected run)."))
        .with_panel(_ts("Seconds since the last completed epoch", "s",
                        [(f"time() - esper_last_progress_timestamp_seconds{{{I}}}", "{{instance}}")]))
    )  # fmt: skip


def ppo_health() -> db.Dashboard:
    def ppo(title: str, metric: str, unit: str = "none") -> ts.Panel:
        return _ts(title, unit, [(f"{metric}{{{I}}}", title.lower())], width=8)

    return (
        _escalations(_dashboard("esper-ppo", "Esper / Tamiyo PPO health",
                   "The controller's vital signs: losses, entropy per head, KL, clipping, "
                   "gradients, update time."))
        .with_row(db.Row("Losses"))
        .with_panel(ppo("Policy loss", "esper_ppo_policy_loss"))
        .with_panel(ppo("Value loss", "esper_ppo_value_loss"))
        .with_panel(ppo("Explained variance", "esper_ppo_explained_variance"))
        .with_row(db.Row("Exploration"))
        .with_panel(_ts("Entropy per head", "none",
                        [(f"esper_ppo_head_entropy{{{I}}}", "{{head}}"),
                         (f"esper_ppo_entropy{{{I}}}", "total")], width=8))
        .with_panel(ppo("KL divergence", "esper_ppo_kl_divergence"))
        .with_panel(ppo("Clip fraction", "esper_ppo_clip_fraction", "percentunit"))
        .with_panel(ppo("Entropy collapsed (1 = yes)", "esper_ppo_entropy_collapsed"))
        .with_panel(ppo("Learning rate", "esper_ppo_learning_rate"))
        .with_row(db.Row("Gradients and time"))
        .with_panel(_ts("Gradient norm", "none",
                        [(f"esper_ppo_grad_norm{{{I}}}", "total"),
                         (f"esper_ppo_head_grad_norm{{{I}}}", "{{head}}")], width=8))
        .with_panel(_ts("Update time (p95)", "s",
                        [(f"esper:ppo_update_duration_seconds:p95{{{I}}}", "p95"),
                         (f"rate(esper_ppo_update_duration_seconds_sum{{{I}}}[{RATE}]) / "
                          f"rate(esper_ppo_update_duration_seconds_count{{{I}}}[{RATE}])", "mean")],
                        width=8))
        .with_panel(_ts("Updates per minute", "none",
                        [(f"rate(esper_ppo_updates_total{{{I}}}[{RATE}]) * 60", "updates/min")],
                        width=8))
        .with_panel(_ts("Actions taken", "none",
                        [(f"sum by (op, success) (increase(esper_actions_total{{{I}}}[{RATE}]))",
                          "{{op}} success={{success}}")], width=12))
    )  # fmt: skip


def seed_lifecycle() -> db.Dashboard:
    traces = (
        table.Panel().title("Seed traces (Tempo)").datasource(TEMPO).height(8).span(24)
        .description("Every seed's life is a trace: open one to see its stages and gates.")
        .with_target(
            tempo.TempoQuery().ref_id("A").datasource(TEMPO).query_type("traceql").limit(50)
            .query('{ name = "esper.seed" && resource.esper.run.id =~ "$run" }')
        )
    )  # fmt: skip
    return (
        _dashboard("esper-seeds", "Esper / Seed lifecycle",
                   "What the controller grew: germinations, fossilizations, culls by reason and "
                   "blueprint, stages, alpha, seed gradient health, and each seed's trace.")
        .with_row(db.Row("Lifecycle"))
        .with_panel(_ts("Germinated by blueprint", "none",
                        [(f"sum by (blueprint_id) (increase(esper_seed_germinated_total{{{I}}}[{RATE}]))",
                          "{{blueprint_id}}")], width=8))
        .with_panel(_ts("Fossilized by blueprint", "none",
                        [(f"sum by (blueprint_id) (esper_seed_fossilized_total{{{I}}})",
                          "{{blueprint_id}}")], width=8))
        .with_panel(_ts("Culled by reason", "none",
                        [(f"sum by (reason) (esper_seed_culled_total{{{I}}})", "{{reason}}"),
                         (f"sum by (reason) (esper:seed_culled:rate5m{{{I}}}) * 300",
                          "{{reason}} (per 5 min)")], width=8))
        .with_panel(_ts("Seeds per stage", "none",
                        [(f"esper_seeds{{{I}}}", "{{stage}}")]))
        .with_panel(_ts("Stage transitions", "none",
                        [(f"sum by (from_stage, to_stage) (increase(esper_seed_stage_transitions_total{{{I}}}[{RATE}]))",
                          "{{from_stage}} -> {{to_stage}}")]))
        .with_row(db.Row("Seeds in slots"))
        .with_panel(_ts("Alpha per slot", "percentunit",
                        [(f"esper_seed_alpha{{{IE}}}", f"{ENV} {{{{slot_id}}}}")], width=8))
        .with_panel(_ts("Seed gradient norm", "none",
                        [(f"esper_seed_gradient_total_norm{{{IE}}}",
                          f"{ENV} {{{{slot_id}}}} total"),
                         (f"esper_seed_gradient_norm{{{IE}}}",
                          f"{ENV} {{{{slot_id}}}} per tensor")],
                        width=8))
        .with_panel(_ts("Seed gradient health", "percentunit",
                        [(f"esper_seed_gradient_health{{{IE}}}", f"{ENV} {{{{slot_id}}}}")],
                        width=8))
        .with_panel(_ts("Counterfactual unavailable", "none",
                        [(f"sum by (reason) (esper_counterfactual_unavailable_total{{{I}}})",
                          "{{reason}}")]))
        .with_panel(_ts("Governor rollbacks by env and reason", "none",
                        [(f"esper_governor_rollbacks_total{{{IE}}}", "env {{env_id}} {{reason}}")],
                        "Needs a run with rollbacks (e.g. --inject-fault nan-loss@N)." + FOLDED))
        .with_panel(traces)
    )  # fmt: skip


def throughput() -> db.Dashboard:
    return (
        _dashboard("esper-throughput", "Esper / Throughput and telemetry health",
                   "How fast the envs run, where they wait, how masks prune actions, and whether "
                   "the telemetry keeps up.")
        .with_row(db.Row("Speed"))
        .with_panel(_ts("Env step time", "s",
                        [(f"esper:env_step_duration_seconds:p50{{{IE}}}", "p50 env {{env_id}}"),
                         (f"esper:env_step_duration_seconds:p95{{{IE}}}", "p95 env {{env_id}}")],
                        FOLDED.strip()))
        .with_panel(_ts("Dataloader wait (p95)", "s",
                        [(f"esper:dataloader_wait_seconds:p95{{{IE}}}", "env {{env_id}}"),
                         (f"rate(esper_dataloader_wait_seconds_sum{{{IE}}}[{RATE}]) / "
                          f"rate(esper_dataloader_wait_seconds_count{{{IE}}}[{RATE}])",
                          "mean env {{env_id}}")], FOLDED.strip()))
        .with_panel(_ts("Samples per second", "none",
                        [(f"esper_env_fps{{{IE}}}", ENV)]))
        .with_panel(_ts("Device memory", "bytes",
                        [(f"esper_cuda_memory_allocated_bytes{{{I}}}", "allocated {{device}}"),
                         (f"esper_cuda_memory_reserved_bytes{{{I}}}", "reserved {{device}}")],
                        "CUDA only: empty on a CPU run."))
        .with_row(db.Row("Ranks (multi-process runs under torchrun)"))
        .with_panel(_ts("Epoch time by rank", "s",
                        [(f"esper_rank_epoch_seconds{{{I}}}", "rank {{rank}} ({{node}})")],
                        "Wall time of each rank's last host epoch over its envs."))
        .with_panel(_ts("Slowest rank against the median", "s",
                        [(f"esper:run_rank_epoch_seconds:max{{{RUN}}}", "{{run_id}} slowest"),
                         (f"esper:run_rank_epoch_seconds:median{{{RUN}}}", "{{run_id}} median")],
                        "A straggler shows as a slowest line well above the median "
                        "(alert EsperRankStraggler). Recording rules: two series per run, "
                        "whatever its ranks."))
        .with_panel(_ts("Time waiting in collectives by rank", "percentunit",
                        [(f"sum by (rank) (rate(esper_collective_wait_seconds_sum{{{I}}}[{RATE}]))",
                          "rank {{rank}}")],
                        f"{REQUIRES_RANKS}. Share of wall time each rank spends blocked in "
                        "collectives: the fast ranks wait for the slowest."))
        .with_panel(_ts("Collective wait (p90) by rank and operation", "s",
                        [(f"histogram_quantile(0.9, sum by (rank, op, le) "
                          f"(rate(esper_collective_wait_seconds_bucket{{{I}}}[{RATE}])))",
                          "rank {{rank}} {{op}}")],
                        f"{REQUIRES_RANKS}. How long one collective takes on each rank."))
        .with_row(db.Row("Action masks"))
        .with_panel(_ts("Mask hit ratio per head", "percentunit",
                        [(f"esper_action_mask_hit_ratio{{{I}}}", "{{head}}")]))
        .with_panel(_ts("Mask hits and checks", "none",
                        [(f"sum by (head) (esper_action_mask_hits_total{{{I}}})", "hits {{head}}"),
                         (f"sum by (head) (esper_action_mask_checks_total{{{I}}})",
                          "checks {{head}}")]))
        .with_row(db.Row("Telemetry"))
        .with_panel(_ts("Events per second by type", "none",
                        [(f"esper:telemetry_events:rate1m{{{I}}}", "{{event_type}}"),
                         (f"sum(rate(esper_telemetry_events_total{{{I}}}[{RATE}]))", "total")]))
        .with_panel(_ts("Dropped and lost", "none",
                        [(f"esper_telemetry_events_dropped_total{{{I}}}", "dropped {{backend}}"),
                         (f"esper_telemetry_backend_lost_total{{{I}}}", "lost {{backend}}")],
                        "Events dropped under overload, and items a backend could not keep."))
    )  # fmt: skip


G = 'Hostname=~"$host", gpu=~"$gpu"'  # DCGM series: the chosen hosts and GPUs
MIB = 1048576  # DCGM reports framebuffer memory in MiB


def gpu_health() -> db.Dashboard:
    """GPU health from NVIDIA's dcgm-exporter (labels Hostname, gpu, UUID), beside the
    trainer's own CUDA memory (joined on UUID)."""
    d = (
        db.Dashboard("Esper / GPU health").uid("esper-gpu").tags(["esper", "generated"])
        .description("Utilisation, memory, power, temperature, clocks, throttling, XID and ECC "
                     "errors of every GPU (dcgm-exporter, compose profile gpu), and the memory "
                     "the trainers hold on them.")
        .refresh("10s").time("now-1h", "now").timezone("browser").editable()
        .links([db.DashboardLink("Esper dashboards").type(DashboardLinkType.DASHBOARDS)
                .tags(["esper"]).as_dropdown(True).include_vars(True).keep_time(True)])
        .with_variable(_variable("host", "Host", "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)"))
        .with_variable(_variable(
            "gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_UTIL{Hostname=~"$host"}, gpu)'))
        .with_variable(_variable(
            "instance", "Trainer", "label_values(esper_cuda_memory_reserved_bytes, instance)"))
    )  # fmt: skip
    legend = "{{Hostname}} gpu {{gpu}}"
    return (
        d.with_row(db.Row("Load"))
        .with_panel(_ts("Utilisation", "percent",
                        [(f"DCGM_FI_DEV_GPU_UTIL{{{G}}}", legend)],
                        "Share of time a kernel ran. Low while epochs advance: EsperGPUIdle."))
        .with_panel(_ts("Memory used", "bytes",
                        [(f"DCGM_FI_DEV_FB_USED{{{G}}} * {MIB}", f"used {legend}"),
                         (f"(DCGM_FI_DEV_FB_USED{{{G}}} + DCGM_FI_DEV_FB_FREE{{{G}}}) * {MIB}",
                          f"total {legend}")],
                        "Framebuffer memory in use by every process on the GPU."))
        .with_panel(_ts("Power", "watt", [(f"DCGM_FI_DEV_POWER_USAGE{{{G}}}", legend)]))
        .with_panel(_ts("Temperature", "celsius",
                        [(f"DCGM_FI_DEV_GPU_TEMP{{{G}}}", f"core {legend}"),
                         (f"DCGM_FI_DEV_MEMORY_TEMP{{{G}}}", f"memory {legend}")]))
        .with_row(db.Row("Clocks and throttling"))
        .with_panel(_ts("SM clock", "rotmhz", [(f"DCGM_FI_DEV_SM_CLOCK{{{G}}}", legend)]))
        .with_panel(_ts("Time throttled", "percentunit",
                        [(f"rate(DCGM_FI_DEV_THERMAL_VIOLATION{{{G}}}[{RATE}]) / 1e6",
                          f"thermal {legend}"),
                         (f"rate(DCGM_FI_DEV_POWER_VIOLATION{{{G}}}[{RATE}]) / 1e6",
                          f"power {legend}")],
                        "Share of time the clocks were held down (DCGM violation counters)."))
        .with_panel(_ts("Clock event reasons", "none",
                        [(f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{G}}}", legend)],
                        "NVML bitmask: 0x4 software power cap, 0x8 hardware slowdown, 0x20 "
                        "software thermal, 0x40 hardware thermal, 0x80 power brake; 0x1 idle."))
        .with_row(db.Row("Errors"))
        .with_panel(_stat("Last XID error", "none",
                          [(f"max by (Hostname, gpu) (DCGM_FI_DEV_XID_ERRORS{{{G}}})", legend)],
                          "0 when none; otherwise the last XID (EsperGPUXidError)."))
        .with_panel(_stat("ECC errors (1h)", "none",
                          [(f"sum by (Hostname, gpu) (increase(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{G}}}[1h]))",
                            f"single-bit {legend}"),
                           (f"sum by (Hostname, gpu) (increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{G}}}[1h]))",
                            f"double-bit {legend}")]))
        .with_panel(_stat("Remapped rows", "none",
                          [(f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{G}}}",
                            f"uncorrectable {legend}"),
                           (f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{G}}}", f"remap failed {legend}")]))
        .with_panel(_stat("PCIe replays (1h)", "none",
                          [(f"increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{G}}}[1h])", legend)]))
        .with_row(db.Row("The trainers' memory"))
        .with_panel(_ts("Trainer CUDA memory", "bytes",
                        [(f"esper_cuda_memory_allocated_bytes{{{I}}}",
                          "allocated {{instance}} {{device}}"),
                         (f"esper_cuda_memory_reserved_bytes{{{I}}}",
                          "reserved {{instance}} {{device}}"),
                         (f"esper_cuda_memory_peak_allocated_bytes{{{I}}}",
                          "peak {{instance}} {{device}}")],
                        "From torch's caching allocator in each trainer (CUDA only)."))
        .with_panel(_ts("Trainer share of the GPU's memory", "percentunit",
                        [(f"sum by (UUID) (esper_cuda_memory_reserved_bytes{{{I}}}) / on (UUID) "
                          f"max by (UUID) (DCGM_FI_DEV_FB_USED{{{G}}} * {MIB})", "{{UUID}}")],
                        "Reserved by the trainers over used by every process (joined on UUID); "
                        "far below 1 means another process holds the GPU (CUDA only)."))
        .with_panel(_stat("CUDA out-of-memory errors", "none",
                          [(f"sum by (instance) (esper_cuda_oom_total{{{I}}})", "{{instance}}")],
                          "Raised by the caching allocator in each trainer (CUDA only)."))
    )  # fmt: skip


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "esper-overview.json": training_overview,
    "esper-ppo.json": ppo_health,
    "esper-seeds.json": seed_lifecycle,
    "esper-throughput.json": throughput,
    "esper-gpu.json": gpu_health,
}
"""File name under dashboards/ -> the function that builds it."""

REQUIRES_CUDA = "CUDA only"
REQUIRES_RANKS = "Multi-rank runs only"
"""Panel descriptions starting so have data only from runs under torchrun."""
GPU_DASHBOARD = "esper-gpu.json"
"""Its panels need dcgm-exporter and CUDA: tests/karn/test_gpu_dashboard.py answers them from
DCGM-shaped series and the exporter's CUDA gauges."""
REQUIRES_FAULT = "Needs a"


def render(name: str) -> str:
    """The JSON of one dashboard, as checked in."""
    dashboard = DASHBOARDS[name]().build()
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number  # Grafana keys panel state (links, edits) on unique ids
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard) + "\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = directory / name
        text = render(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def panel_queries(dashboard_json: str) -> list[tuple[str, str, str, str]]:
    """(panel title, description, datasource uid, expression) of every panel target."""
    doc = json.loads(dashboard_json)
    out = []
    for panel in doc.get("panels", []):
        for target in panel.get("targets", []):
            uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
            out.append((panel["title"], panel.get("description", ""), uid,
                        target.get("expr") or target.get("query", "")))  # fmt: skip
    return out
