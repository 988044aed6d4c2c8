"""Offline controllers against the heuristic, with real seed telemetry in the observation.

``snapshot_to_features`` appends the 10 seed-telemetry features (gradient health, progress)
of the env's focus seed to the 27 base features, so the offline policy sees each seed's real
gradient health rather than zero padding. The telemetry is collected inside each epoch
(``MorphogeneticEnv.run_epoch``: gradients after ``backward()`` and before the optimizer step,
``sync_telemetry`` after validation). ``load_iql_model`` reads a trained model and says which
feature set it expects: 27 ("none"), 37 ("seed") or the legacy 54 ("full").
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from esper.leyline import Op, SeedTelemetry, TelemetryConfig, TelemetryEvent
from esper.nissa import emit as hub_emit
from esper.simic.episodes import (
    N_ACTIONS,
    TELEMETRY_OFF,
    OfflineDataset,
    TrainingSnapshot,
    action_index,
    action_of,
    focus_telemetry,
    snapshot_of,
)
from esper.simic.features import (
    BASE_FEATURE_DIM,
    FEATURE_SETS,
    LEGACY_FULL_STATE_DIM,
    TELEMETRY_STATE_DIM,
    snapshot_features,
)
from esper.simic.iql import IQL
from esper.simic.observation import action_masks
from esper.simic.rewards import compute_reward
from esper.tamiyo.heuristic import HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.data import load_task
from esper.tolaria.environment import MorphogeneticEnv

TELEMETRY_TYPES = {FEATURE_SETS[name].dim: name for name in ("none", "seed", "full")}
"""State dimension -> the snapshot feature set a model was trained on."""


def load_iql_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[IQL, bool, str]:
    """(iql, use_telemetry, telemetry_type) from a checkpoint, inferring the telemetry type
    from the state dimension: 27 "none", 37 "seed", 54 "full" (legacy), else "unknown" with a
    warning. Loads with ``weights_only=True``."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(
            f"{path}: not an IQL checkpoint (cannot load it: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an IQL checkpoint")
    state_dim = int(ckpt.get("state_dim") or ckpt["state_dict"]["q_network.0.weight"].shape[1])
    telemetry_type = TELEMETRY_TYPES.get(state_dim, "unknown")
    if telemetry_type == "unknown":
        warnings.warn(
            f"{path}: state dimension {state_dim} matches no known feature set "
            f"({BASE_FEATURE_DIM}, {TELEMETRY_STATE_DIM} or {LEGACY_FULL_STATE_DIM})",
            UserWarning,
            stacklevel=2,
        )
    iql = IQL(state_dim, int(ckpt.get("n_actions", N_ACTIONS)))
    iql.load_state_dict(ckpt["state_dict"])
    iql.to(device)
    return iql, telemetry_type in ("seed", "full"), telemetry_type


def snapshot_to_features(
    snapshot: TrainingSnapshot,
    use_telemetry: bool = False,
    seed_telemetry: SeedTelemetry | None = None,
) -> list[float]:
    """27 base features, or 37 with the seed-telemetry features appended (feature sets
    ``none`` and ``seed`` of ``esper.simic.features``).

    Asking for telemetry without giving any appends zeros and warns: a model trained with
    telemetry then sees "no information" rather than a fabricated seed.
    """
    return snapshot_features(snapshot, "seed" if use_telemetry else "none", seed_telemetry)


def offline_action_mask(env: MorphogeneticEnv) -> torch.Tensor:
    """(N_ACTIONS,) bool: (op, slot) pairs that are physically possible."""
    op_mask, slot_masks = action_masks(env)
    mask = torch.zeros(N_ACTIONS, dtype=torch.bool)
    for op in Op:
        for i in range(slot_masks.shape[1]):
            ok = bool(op_mask[int(op)]) and bool(slot_masks[int(op), i])
            if op is Op.WAIT:
                ok = i == 0  # WAIT ignores the slot: one action, not three
            mask[int(op) * slot_masks.shape[1] + i] = ok
    return mask


Controller = Callable[[MorphogeneticEnv, TrainingSnapshot, list[float], bool], tuple[Op, str]]


@dataclass(slots=True)
class ControllerResult:
    name: str
    seeds: list[int]
    final_accuracy: float
    params_added: int
    germinated: int
    fossilized: int
    culled: int
    decisions: int = 0
    seed_telemetry_decisions: int = 0
    """Decisions whose observation carried a live seed's telemetry (0 without telemetry)."""


@dataclass(slots=True)
class EpisodeStats:
    """What ``run_episode`` counts: decisions, and those made seeing a live seed's telemetry."""

    decisions: int = 0
    seed_telemetry_decisions: int = 0


def run_episode(
    controller: Controller,
    *,
    seed: int,
    task: str = "digits",
    max_epochs: int = 30,
    param_budget: int = 60_000,
    use_telemetry: bool = False,
    telemetry_type: str | None = None,
    telemetry: TelemetryConfig | None = None,
    emit: Callable[[TelemetryEvent], None] = hub_emit,
    on_step: Callable[[list[float], int, float, list[float], bool], None] | None = None,
    stats: EpisodeStats | None = None,
) -> MorphogeneticEnv:
    """One episode of one env under ``controller``; seed telemetry is collected in the loop
    (gradients after backward and before the step, ``sync_telemetry`` after validation, both
    inside ``run_epoch``). The observation is the 27 base features, plus the focus seed's 10
    telemetry features when ``use_telemetry`` (``telemetry_type`` "full" is the legacy 54).
    ``on_step(obs, action, reward, next_obs, done)`` sees each decision; ``stats`` counts
    them."""
    kind = telemetry_type or ("seed" if use_telemetry else "none")
    env = MorphogeneticEnv(
        0, load_task(task), seed=seed, telemetry=telemetry or TelemetryConfig(), emit=emit
    )
    env.reset(0)
    tracker = SignalTracker(0)
    results = []
    pending: tuple[list[float], int, Op, str, bool, float | None] | None = None
    for epoch in range(1, max_epochs + 1):
        result = env.run_epoch(epoch, 0, max_epochs)
        plateau = tracker.update(result.val_accuracy, epoch)
        results.append(result)
        snap = snapshot_of(env, results, plateau_epochs=tracker.epochs_without_improvement)
        live = focus_telemetry(env)
        # No live seed: the telemetry of an empty (dormant) slot, not a missing value.
        seed_telemetry = (live or SeedTelemetry(seed_id="")) if kind == "seed" else None
        obs = snapshot_features(snap, kind, seed_telemetry)
        done = epoch == max_epochs
        if pending is not None and on_step is not None:
            p_obs, p_action, op, slot_id, success, contribution = pending
            parts = compute_reward(
                env,
                results[-2],
                result,
                op=op,
                slot_id=slot_id,
                success=success,
                param_budget=param_budget,
                terminal=done,
                acted_contribution=contribution,
            )
            on_step(p_obs, p_action, sum(parts.values()), obs, done)
        if done:
            break
        op, slot_id = controller(env, snap, obs, plateau)
        if stats is not None:
            stats.decisions += 1
            stats.seed_telemetry_decisions += int(kind == "seed" and live is not None)
        state = env.model.slot(slot_id).state
        contribution = None if state is None else state.metrics.counterfactual_contribution
        success = env.apply(op, slot_id, _blueprint_for(controller))
        pending = (obs, action_index(op, slot_id), op, slot_id, success, contribution)
    return env


def _blueprint_for(controller: Controller) -> str:
    chooser = getattr(controller, "blueprint", None)
    return "conv_light" if chooser is None else str(chooser())


class HeuristicController:
    """HeuristicTamiyo as an offline-episode controller (the behaviour policy)."""

    name = "heuristic"

    def __init__(self, param_budget: int = 60_000) -> None:
        self.tamiyo = HeuristicTamiyo(param_budget=param_budget)
        self._last_blueprint = "conv_light"

    def __call__(
        self, env: MorphogeneticEnv, snap: TrainingSnapshot, obs: list[float], plateau: bool
    ) -> tuple[Op, str]:
        d = self.tamiyo.decide(
            env.slots,
            plateau=plateau,
            inner_epoch=snap.epoch,
            max_epochs=env.context.max_epochs,
            seed_params=env.seed_params(),
        )
        self._last_blueprint = d.blueprint_id
        return d.op, d.slot_id

    def blueprint(self) -> str:
        return self._last_blueprint


class PolicyController:
    """An offline-trained policy (IQL) choosing (op, slot); blueprints round robin."""

    name = "iql"

    def __init__(self, act: Callable[[torch.Tensor, torch.Tensor], int]) -> None:
        self.act = act
        self._blueprints = HeuristicTamiyo().config.blueprints
        self._next = 0

    def __call__(
        self, env: MorphogeneticEnv, snap: TrainingSnapshot, obs: list[float], plateau: bool
    ) -> tuple[Op, str]:
        index = self.act(torch.tensor(obs, dtype=torch.float32), offline_action_mask(env))
        return action_of(index)

    def blueprint(self) -> str:
        bp = self._blueprints[self._next % len(self._blueprints)]
        self._next += 1
        return bp


def head_to_head_comparison(
    controllers: Sequence[Controller],
    *,
    seeds: Sequence[int],
    task: str = "digits",
    max_epochs: int = 30,
    use_telemetry: bool = False,
    telemetry_type: str | None = None,
    emit: Callable[[TelemetryEvent], None] = hub_emit,
) -> list[ControllerResult]:
    """Run every controller on the same task and seeds; one result row per controller. With
    ``use_telemetry`` each observation carries the focus seed's synced ``seed_telemetry``;
    the row counts the decisions that saw a live seed's."""
    rows = []
    for controller in controllers:
        accs, params, counts = [], [], {"germinated": 0, "fossilized": 0, "culled": 0}
        stats = EpisodeStats()
        for seed in seeds:
            env = run_episode(
                controller,
                seed=seed,
                task=task,
                max_epochs=max_epochs,
                use_telemetry=use_telemetry,
                telemetry_type=telemetry_type,
                emit=emit,
                stats=stats,
            )
            accs.append(env.last_val_accuracy)
            params.append(env.seed_params())
            for k in counts:
                counts[k] += env.counts[k]
        rows.append(
            ControllerResult(
                getattr(controller, "name", type(controller).__name__),
                list(seeds),
                sum(accs) / len(accs),
                sum(params),
                counts["germinated"],
                counts["fossilized"],
                counts["culled"],
                stats.decisions,
                stats.seed_telemetry_decisions,
            )
        )
    return rows


def format_table(rows: Sequence[ControllerResult]) -> str:
    lines = [
        "| controller | final accuracy (mean) | params added | germinated | fossilized | culled "
        "| decisions seeing seed telemetry |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {r.name} | {r.final_accuracy:.2f}% | {r.params_added:,} | {r.germinated} | "
        f"{r.fossilized} | {r.culled} | {r.seed_telemetry_decisions} of {r.decisions} |"
        for r in rows
    )
    return "\n".join(lines)


def live_comparison(
    controllers: Sequence[Controller],
    *,
    seeds: Sequence[int],
    task: str = "digits",
    max_epochs: int = 30,
    use_telemetry: bool = False,
    telemetry_type: str | None = None,
    emit: Callable[[TelemetryEvent], None] = hub_emit,
) -> list[ControllerResult]:
    """``head_to_head_comparison`` that emits telemetry like any run and prints the table."""
    rows = head_to_head_comparison(
        controllers,
        seeds=seeds,
        task=task,
        max_epochs=max_epochs,
        use_telemetry=use_telemetry,
        telemetry_type=telemetry_type,
        emit=emit,
    )
    print(format_table(rows))
    return rows


def record_heuristic_episodes(
    *,
    seeds: Sequence[int],
    task: str = "digits",
    max_epochs: int = 30,
    use_telemetry: bool = False,
) -> OfflineDataset:
    """Run the heuristic controller once per seed and keep every decision it made."""
    dataset = OfflineDataset()

    def keep(
        obs: list[float], action: int, reward: float, next_obs: list[float], done: bool
    ) -> None:
        dataset.obs.append(obs)
        dataset.actions.append(action)
        dataset.rewards.append(reward)
        dataset.next_obs.append(next_obs)
        dataset.dones.append(done)

    for seed in seeds:
        run_episode(
            HeuristicController(), seed=seed, task=task, max_epochs=max_epochs,
            use_telemetry=use_telemetry, telemetry=TELEMETRY_OFF, emit=lambda e: None,
            on_step=keep,
        )  # fmt: skip
    return dataset
