"""Vectorized PPO: ``n_envs`` envs step in lockstep, one batched policy call per epoch.

A batch is one episode in every env (``max_epochs`` host epochs each). After each epoch but
the last, the policy observes every env and picks one factored action per env; the reward of
that action is measured at the next epoch. After the batch, PPO updates the policy.

Telemetry, by level: minimal (lifecycle: run start and end, seeds, rollbacks, checkpoints,
gradient anomalies); normal adds EPOCH_COMPLETED, COUNTERFACTUAL_COMPUTED, BATCH_EPOCH_COMPLETED,
PPO_UPDATE_COMPLETED and the per-batch snapshots (action_distribution, throughput,
reward_summary, mask_hit_rates); debug adds per-step last_action snapshots and REWARD_COMPUTED.
Device values reach the host once per epoch per env (the env's own read-back) plus once per
epoch for the batched actions and once per batch for the mask counts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import (
    ACTION_HEADS,
    BlendMode,
    EmitsEvents,
    FactoredAction,
    Op,
    Severity,
    TelemetryEventType,
    deliver,
    emit_event,
    make_event,
)
from esper.nissa import get_hub
from esper.simic.collectives import (
    Collectives,
    LocalCollectives,
    RunBatch,
    gather_batch,
    policy_digest,
)
from esper.simic.emitters import (
    _apply_slot_telemetry,
    _emit_action_distribution,
    _emit_cf_unavailable,
    _emit_collectives,
    _emit_mask_hit_rates,
    _emit_ppo_update_event,
    _emit_reward_summary,
    _emit_throughput,
)
from esper.simic.escalation import DEFAULT_ESCALATE_EPOCHS, Escalation
from esper.simic.features import observe, state_dim
from esper.simic.observation import action_masks
from esper.simic.ppo import PPOConfig, PPOTrainer, Rollout
from esper.simic.rewards import REWARD_MODE, compute_reward
from esper.tamiyo.policy import ActionBatch, PolicyNetwork
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.environment import (
    EpisodeSettings,
    EpochResult,
    MorphogeneticEnv,
    emit_aggregate_epoch,
)
from esper.tolaria.gradients import gradient_anomaly

__all__ = [
    "PPOSettings",
    "VectorizedPPO",
    "_apply_slot_telemetry",
    "_emit_action_distribution",
    "_emit_cf_unavailable",
    "_emit_last_action",
    "_emit_mask_hit_rates",
    "_emit_ppo_update_event",
    "_emit_reward_summary",
    "_emit_throughput",
]

ET = TelemetryEventType


# The user's plan (tests/plans) calls this here, with get_hub patched in this module.
def _emit_last_action(
    env_id: int,
    epoch: int,
    factored_action: FactoredAction,
    masked: Mapping[str, bool],
    success: bool,
    *,
    hub: EmitsEvents | None = None,
) -> dict[str, Any]:
    """ANALYTICS_SNAPSHOT kind=last_action: one env's decision, whether each head's mask
    removed a choice, and whether it succeeded (debug level). Sent to ``hub`` (the run's),
    or to the process hub; returns the payload."""
    a = factored_action
    data: dict[str, Any] = {
        "kind": "last_action",
        "env_id": env_id,
        "epoch": epoch,
        "op": a.op.name,
        "slot_id": a.slot_id,
        "blueprint_id": a.blueprint_id,
        "blend_id": a.blend_id,
        **{f"{h}_masked": bool(masked[h]) for h in ACTION_HEADS},
        "action_success": success,
    }
    emit_event(
        (get_hub() if hub is None else hub).emit,
        ET.ANALYTICS_SNAPSHOT,
        data,
        message=f"env {env_id}: {a.op.name} {a.slot_id}",
        epoch=epoch,
    )
    return data


CHECKPOINT_FORMAT = "esper-ppo-v1"
ROLLING_WINDOW = 10


@dataclass(slots=True)
class _Pending:
    """An action taken after one epoch, rewarded at the next."""

    op: Op
    slot_id: str
    success: bool
    contribution: float | None
    before: EpochResult


@dataclass(slots=True)
class _BatchStats:
    action_counts: dict[str, int] = field(default_factory=lambda: {op.name: 0 for op in Op})
    success_counts: dict[str, int] = field(default_factory=lambda: {op.name: 0 for op in Op})
    step_seconds: list[list[float]] = field(default_factory=list)
    wait_seconds: list[list[float]] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    reward_parts: list[dict[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class PPOSettings(EpisodeSettings):
    """What the PPO driver needs of a run: every driver's settings, and PPO's own."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    vectorized: bool = True
    """One batched policy call per epoch (False: one call per env, for comparison)."""
    policy_device: str = "cpu"
    comm: Collectives = field(default_factory=LocalCollectives)
    """The other ranks of a multi-process run (LocalCollectives: this process alone)."""
    total_envs: int = 0
    """Envs over all ranks (0: this process's envs are all of them)."""
    escalate_epochs: int = DEFAULT_ESCALATE_EPOCHS
    """Epochs an anomaly raises its env to debug (see ``esper.simic.escalation``)."""


class VectorizedPPO:
    """The PPO controller's driver: ``units()`` batches (one episode in every env each), one
    ``run_unit`` per batch, the policy updated after each. The run lifecycle
    (``esper.runs``) owns what surrounds it: start and end events, checkpoints, stopping.

    Across ranks (``settings.comm``), each rank drives its own envs (their ``env_id`` is
    global) with a replica of the policy: rank 0's initial weights are broadcast, the
    update averages gradients (see PPOTrainer), and after each batch one packed all-gather
    brings every rank's accuracies, rewards, action and mask counts and update vitals to
    every rank. BATCH_EPOCH_COMPLETED, PPO_UPDATE_COMPLETED and the batch snapshots
    (action_distribution, mask_hit_rates) describe the whole run and are emitted by rank 0
    alone; per-env events, and each rank's ``collectives`` snapshot of its waits, by every
    rank."""

    mode = "ppo"

    def __init__(
        self, envs: list[MorphogeneticEnv], hub: EmitsEvents, settings: PPOSettings
    ) -> None:
        self.config = settings
        self.hub = hub
        self.tel = settings.telemetry
        self.envs = envs
        self.escalation = Escalation(settings.escalate_epochs, self.tel, hub.emit)
        for env in self.envs:
            _apply_slot_telemetry(env, self.tel.analytics, self.tel.lifecycle)
            env.context.emit = self.escalation.watch(env.env_id, env.context.emit)
        self.policy_device = settings.policy_device
        self.policy = PolicyNetwork(state_dim(len(SLOT_IDS)), len(SLOT_IDS), len(BLUEPRINT_IDS))
        self.policy.to(self.policy_device)
        self.comm = settings.comm
        self.comm.broadcast_parameters(self.policy)
        self.total_envs = settings.total_envs or len(envs)
        self.env_offset = self.comm.rank * len(envs)
        """Where this rank's envs start among all envs (and its episodes within a batch)."""
        self.trainer = PPOTrainer(self.policy, settings.ppo, self.comm)
        self.episodes_completed = 0
        """Episodes this run trained (not counting those of a checkpoint it resumed)."""
        self.final_accuracies: list[float] = []
        self.episode_rewards: list[float] = []
        """Mean episode reward of each batch, in order."""
        self.rolling: deque[float] = deque(maxlen=ROLLING_WINDOW)
        self.start_episode = 0

    # -- one batch -----------------------------------------------------------------------------

    def _decide(
        self, obs: list[list[float]], masks: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, ActionBatch]:
        """One action per env: a single batched policy call when vectorized, else one call
        per env (same result, for comparison)."""
        dev = self.policy_device
        obs_t = torch.tensor(obs, dtype=torch.float32, device=dev)
        op_masks = torch.stack([m[0] for m in masks]).to(dev)
        slot_masks = torch.stack([m[1] for m in masks]).to(dev)
        if self.config.vectorized:
            return obs_t, self.policy.act(obs_t, op_masks, slot_masks)
        parts = [
            self.policy.act(obs_t[i : i + 1], op_masks[i : i + 1], slot_masks[i : i + 1])
            for i in range(len(obs))
        ]
        return obs_t, ActionBatch(
            torch.cat([b.actions for b in parts]),
            torch.cat([b.log_prob for b in parts]),
            torch.cat([b.value for b in parts]),
            {h: torch.cat([b.masks[h] for b in parts]) for h in ACTION_HEADS},
        )

    def _act(
        self,
        env: MorphogeneticEnv,
        action: list[int],
        masked: dict[str, bool],
        before: EpochResult,
        stats: _BatchStats,
    ) -> _Pending:
        """Carry out one env's action and remember what is needed to reward it."""
        op = Op(action[0])
        slot_id = SLOT_IDS[action[1]]
        blueprint_id = BLUEPRINT_IDS[action[2]]
        blend = BlendMode(action[3])
        slot_state = env.model.slot(slot_id).state
        contribution = (
            None if slot_state is None else slot_state.metrics.counterfactual_contribution
        )
        success = env.apply(op, slot_id, blueprint_id, blend)
        stats.action_counts[op.name] += 1
        stats.success_counts[op.name] += int(success)
        if self.escalation.debug(env.env_id, before.inner_epoch):
            _emit_last_action(
                env.env_id,
                before.inner_epoch,
                FactoredAction(op, slot_id, blueprint_id, blend.name),
                masked,
                success,
                hub=self.hub,
            )
        return _Pending(op, slot_id, success, contribution, before)

    def _reward(
        self,
        rollout: Rollout,
        stats: _BatchStats,
        *,
        i: int,
        env: MorphogeneticEnv,
        p: _Pending,
        after: EpochResult,
        episode: int,
        terminal: bool,
    ) -> None:
        parts = compute_reward(
            env,
            p.before,
            after,
            op=p.op,
            slot_id=p.slot_id,
            success=p.success,
            param_budget=self.config.param_budget,
            terminal=terminal,
            acted_contribution=p.contribution,
        )
        total = sum(parts.values())
        rollout.rewards[i].append(total)
        summary = stats.reward_parts[i]
        for k, v in parts.items():
            summary[k] = summary.get(k, 0.0) + v
        if not self.escalation.debug(env.env_id, p.before.inner_epoch):
            return
        slot_state = env.model.slot(p.slot_id).state
        if p.contribution is None and p.op in (Op.CULL, Op.FOSSILIZE) and p.success:
            # The reward wanted the acted seed's alpha=0 baseline and there was none.
            _emit_cf_unavailable(
                self.hub, env.env_id, p.slot_id, "missing_baseline", epoch=p.before.inner_epoch
            )
        emit_event(
            self.hub.emit,
            ET.REWARD_COMPUTED,
            {
                "env_id": env.env_id,
                "episode": episode,
                "epoch": p.before.inner_epoch,
                "action": p.op.name,
                "action_success": p.success,
                "total_reward": total,
                "val_acc": after.val_accuracy,
                "acc_delta": after.val_accuracy - p.before.val_accuracy,
                "param_ratio": env.seed_params() / max(self.config.param_budget, 1),
                "seed_stage": None if slot_state is None else slot_state.stage.name,
                **parts,
            },
            message=f"env {env.env_id}: {p.op.name} -> reward {total:+.3f}",
            epoch=p.before.inner_epoch,
        )

    def _run_batch(self, batch_idx: int, episode0: int) -> None:
        cfg, tel, envs, hub = self.config, self.tel, self.envs, self.hub
        epochs = cfg.max_epochs
        rollout = Rollout.for_envs(len(envs))
        stats = _BatchStats(
            step_seconds=[[] for _ in envs],
            wait_seconds=[[] for _ in envs],
            samples=[0] * len(envs),
            reward_parts=[{} for _ in envs],
        )
        analytics_emit = hub.emit if tel.analytics else None
        trackers = [SignalTracker(e.env_id, emit=analytics_emit) for e in envs]
        for i, env in enumerate(envs):
            env.reset(episode0 + i)
        pending: list[_Pending | None] = [None] * len(envs)
        # Mask hits are counted on the policy's device and read back once per batch.
        mask_hits = torch.zeros(len(ACTION_HEADS), device=self.policy_device)
        decisions = 0
        results: list[EpochResult] = []
        escalation = self.escalation
        escalation.begin_batch()
        # A window still open when the episode ends, or when the run stops inside it (a
        # stop request, a signal, an error), is closed: its end is in the record either way.
        try:
            for epoch in range(1, epochs + 1):
                cfg.check_stop()
                escalation.begin_epoch(epoch)
                started = time.perf_counter()
                results = [env.run_epoch(epoch, batch_idx, epochs) for env in envs]
                epoch_seconds = time.perf_counter() - started
                plateaus = [
                    t.update(r.val_accuracy, epoch) for t, r in zip(trackers, results, strict=True)
                ]
                for i, (env, r) in enumerate(zip(envs, results, strict=True)):
                    stats.step_seconds[i].append(r.step_seconds)
                    stats.wait_seconds[i].append(r.dataloader_wait_seconds)
                    stats.samples[i] += r.samples
                    p = pending[i]
                    if p is not None:
                        self._reward(
                            rollout,
                            stats,
                            i=i,
                            env=env,
                            p=p,
                            after=r,
                            episode=episode0 + i,
                            terminal=epoch == epochs,
                        )
                if tel.analytics:
                    emit_aggregate_epoch(
                        hub.emit, results, batch_idx, any(plateaus), epoch_seconds=epoch_seconds
                    )
                if epoch == epochs:
                    break
                obs = [
                    observe(
                        env,
                        r,
                        previous_accuracy=(p.before.val_accuracy if p else r.val_accuracy),
                        best_accuracy=t.best,
                        plateau=pl,
                        param_budget=cfg.param_budget,
                    )
                    for env, r, p, t, pl in zip(
                        envs, results, pending, trackers, plateaus, strict=True
                    )
                ]
                obs_t, batch = self._decide(obs, [action_masks(env) for env in envs])
                hits = torch.stack([(~batch.masks[h]).any(dim=-1) for h in ACTION_HEADS], dim=1)
                mask_hits += hits.sum(dim=0)
                decisions += len(envs)
                # The host must know the actions to carry them out: one read-back, masks included.
                rows = torch.cat([batch.actions, hits.long()], dim=1).tolist()
                actions = [row[: len(ACTION_HEADS)] for row in rows]
                hit_rows = [[bool(h) for h in row[len(ACTION_HEADS) :]] for row in rows]
                for i, env in enumerate(envs):
                    rollout.add(i, obs_t, batch, i)
                    masked = dict(zip(ACTION_HEADS, hit_rows[i], strict=True))
                    pending[i] = self._act(env, actions[i], masked, results[i], stats)
        finally:
            escalation.end_batch()
        self._finish_batch(
            batch_idx, rollout, stats, results, mask_hits=mask_hits, decisions=decisions
        )

    def _finish_batch(
        self,
        batch_idx: int,
        rollout: Rollout,
        stats: _BatchStats,
        results: list[EpochResult],
        *,
        mask_hits: torch.Tensor,
        decisions: int,
    ) -> None:
        cfg, tel, hub = self.config, self.tel, self.hub
        self.episodes_completed += self.total_envs
        episodes = self.start_episode + self.episodes_completed
        metrics = self.trainer.update(rollout)
        self.trainer.anneal(episodes)
        run = self._gather_batch(
            [r.val_accuracy for r in results],
            [sum(r) for r in rollout.rewards],
            stats,
            mask_hits=[int(h) for h in mask_hits.tolist()],  # once per batch
            decisions=decisions,
            metrics=metrics,
        )
        self.final_accuracies = run.accuracies
        avg_acc = statistics.fmean(run.accuracies)
        avg_reward = statistics.fmean(run.rewards)
        self.episode_rewards.append(avg_reward)
        self.rolling.append(avg_acc)
        rolling = statistics.fmean(self.rolling)
        lead = self.comm.rank == 0  # the run's batch-level events come from rank 0 alone
        if tel.lifecycle:
            self._report_policy_anomalies(emit=lead)
        if run.metrics.get("entropy_collapsed"):  # reduced over the ranks: any rank's
            self.escalation.trigger_policy("PPO_UPDATE_COMPLETED:entropy_collapse", None)
        if lead and tel.analytics:
            update = dict(run.metrics)
            update_ms = update.pop("update_time_ms")
            grad_norm = update.pop("grad_norm")
            _emit_ppo_update_event(
                hub=hub,
                metrics=update,
                episodes_completed=episodes,
                batch_idx=batch_idx,
                epoch=cfg.max_epochs,
                optimizer=self.trainer.optimizer,
                grad_norm=grad_norm,
                update_time_ms=update_ms,
                avg_accuracy=avg_acc,
                avg_reward=avg_reward,
                rolling_avg_accuracy=rolling,
            )
            emit_event(
                hub.emit,
                ET.BATCH_EPOCH_COMPLETED,
                {
                    "batch_idx": batch_idx,
                    "episodes_completed": episodes,
                    "total_episodes": self.start_episode + self.units() * self.total_envs,
                    "start_episode": self.start_episode,
                    "requested_episodes": cfg.episodes,
                    "env_accuracies": run.accuracies,
                    "avg_accuracy": avg_acc,
                    "rolling_accuracy": rolling,
                    "avg_reward": avg_reward,
                },
                message=f"batch {batch_idx}: accuracy {avg_acc:.2f}%, reward {avg_reward:+.3f}",
            )
            _emit_action_distribution(
                hub,
                batch_idx=batch_idx,
                episodes_completed=episodes,
                action_counts=run.action_counts,
                success_counts=run.success_counts,
            )
        if tel.analytics:
            for i, env in enumerate(self.envs):
                steps = stats.step_seconds[i]
                _emit_throughput(
                    hub,
                    env_id=env.env_id,
                    batch_idx=batch_idx,
                    episodes_completed=episodes,
                    step_time_ms=1000.0 * statistics.fmean(steps),
                    fps=stats.samples[i] / max(sum(steps), 1e-9),
                    dataloader_wait_ms=1000.0 * statistics.fmean(stats.wait_seconds[i]),
                )
                _emit_reward_summary(
                    hub, env_id=env.env_id, batch_idx=batch_idx, summary=stats.reward_parts[i]
                )
        if lead and tel.analytics:
            _emit_mask_hit_rates(
                hub,
                batch_idx=batch_idx,
                episodes_completed=episodes,
                mask_hits=dict(zip(ACTION_HEADS, run.mask_hits, strict=True)),
                mask_total=dict.fromkeys(ACTION_HEADS, run.decisions),
            )
        waits = self.comm.take_waits()
        if tel.analytics and self.comm.world_size > 1:
            _emit_collectives(
                hub,
                batch_idx=batch_idx,
                rank=self.comm.rank,
                waits=waits,
                policy_digest=policy_digest(self.policy),
            )

    def _gather_batch(
        self,
        accuracies: list[float],
        rewards: list[float],
        stats: _BatchStats,
        *,
        mask_hits: list[int],
        decisions: int,
        metrics: dict[str, Any],
    ) -> RunBatch:
        """The batch over all ranks (``gather_batch``)."""
        return gather_batch(
            self.comm, accuracies=accuracies, rewards=rewards,
            action_counts=stats.action_counts, success_counts=stats.success_counts,
            mask_hits=mask_hits, decisions=decisions, metrics=metrics,
        )  # fmt: skip

    def _report_policy_anomalies(self, *, emit: bool) -> None:
        """GRADIENT_ANOMALY (scope policy) when the update's worst minibatch had non-finite,
        exploding or vanishing policy gradients (the same rule as the host's and seeds'),
        emitted when ``emit`` (rank 0: the gradients are the same on every rank) and
        escalating every env of every rank."""
        collector = self.trainer.collector
        data = gradient_anomaly(
            "policy",
            self.trainer.last_gradients,
            vanishing_threshold=collector.vanishing_threshold,
            exploding_threshold=collector.exploding_threshold,
        )
        if data is None:
            return
        event = make_event(
            ET.GRADIENT_ANOMALY,
            data,
            message=f"policy gradients {data['kind']}: norm {data['value']:.3g}",
            severity=Severity.WARNING,
        )
        if emit:
            deliver(self.hub.emit, event)
        self.escalation.trigger_policy(
            f"GRADIENT_ANOMALY:policy:{data['kind']}", event.event_id if emit else None
        )

    # -- the run -------------------------------------------------------------------------------

    def units(self) -> int:
        """Batches in the run: enough whole batches for the episodes asked for."""
        return math.ceil(self.config.episodes / self.total_envs)

    def unit_steps(self) -> int:
        """Progress steps per unit: one (a batch)."""
        return 1

    def started_fields(self) -> dict[str, object]:
        """TRAINING_STARTED fields of the controller: the policy and its hyperparameters."""
        ppo = self.config.ppo
        esc = self.escalation
        return {
            "escalate_epochs": esc.epochs if esc.enabled else 0,
            "policy_device": self.policy_device,
            "reward_mode": REWARD_MODE,
            "use_telemetry": True,
            "state_dim": self.policy.state_dim,
            "lr": ppo.lr,
            "clip_ratio": ppo.clip_ratio,
            "entropy_coef": ppo.entropy_coef,
            "entropy_anneal": self.trainer.entropy_schedule(),
        }

    def run_unit(self, unit: int, progress: Callable[[int, str], None] | None = None) -> str:
        """Train one batch (the ``unit``-th of this run; a resumed run continues the batch
        and episode numbers of its checkpoint) and update the policy; returns its status."""
        n_envs = self.total_envs
        batch_idx = self.start_episode // n_envs + unit
        self._run_batch(batch_idx, self.start_episode + unit * n_envs + self.env_offset)
        accuracy = statistics.fmean(self.final_accuracies) if self.final_accuracies else 0.0
        status = f"batch {batch_idx} acc {accuracy:.1f}% reward {self.episode_rewards[-1]:+.2f}"
        if progress is not None:
            progress(1, status)
        return status

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds: the policy, its optimizer and the entropy coefficient."""
        return {
            "format": CHECKPOINT_FORMAT,
            "state_dim": self.policy.state_dim,
            "entropy_coef": self.trainer.entropy_coef,
            "policy": self.policy.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
        }

    def restore(self, checkpoint: dict[str, Any], source: str) -> int:
        """Take the policy, optimizer and entropy coefficient from a checkpoint (read with
        ``weights_only=True``); returns the episodes it had completed. A checkpoint that is
        not a PPO one, or was made for another observation size, is a ValueError naming
        ``source``."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: not an {CHECKPOINT_FORMAT} checkpoint")
        if checkpoint.get("state_dim") != self.policy.state_dim:
            raise ValueError(
                f"{source}: policy observes {checkpoint.get('state_dim')} features, "
                f"this build {self.policy.state_dim}"
            )
        try:
            self.policy.load_state_dict(checkpoint["policy"])
            self.trainer.optimizer.load_state_dict(checkpoint["optimizer"])
            entropy = float(checkpoint.get("entropy_coef", self.trainer.entropy_coef))
            episodes = int(checkpoint["episodes_completed"])
        except KeyError as exc:
            raise ValueError(f"{source}: the checkpoint has no {exc.args[0]!r}") from exc
        except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
            # load_state_dict names the missing, unexpected or misshapen keys.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{source}: the checkpoint does not fit this policy: {first}") from exc
        self.trainer.entropy_coef = entropy
        self.start_episode = episodes
        self.comm.broadcast_parameters(self.policy)  # every rank read the same file; make sure
        return self.start_episode
