"""The reward of a controller decision, as a sum of named components (``shaped`` mode).

Accuracies are in percentage points. Each component is small and bounded so that no single
one drowns the others; REWARD_COMPUTED reports every component by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline import REWARD_COMPONENTS, Op, SeedStage
from esper.tolaria.environment import EpochResult, MorphogeneticEnv

REWARD_MODE = "shaped"


@dataclass(slots=True)
class RewardConfig:
    acc_scale: float = 0.1
    """Reward per point of validation accuracy gained."""
    rent_scale: float = 0.1
    """Penalty per unit of seed parameters over the parameter budget."""
    terminal_scale: float = 0.02
    """Reward per point of final accuracy, at the end of the episode."""


def _clip(x: float, bound: float) -> float:
    return max(-bound, min(bound, x))


def compute_reward(
    env: MorphogeneticEnv,
    before: EpochResult,
    after: EpochResult,
    *,
    op: Op,
    slot_id: str,
    success: bool,
    param_budget: int,
    terminal: bool,
    config: RewardConfig | None = None,
    acted_contribution: float | None = None,
) -> dict[str, float]:
    """Reward components for the decision taken between ``before`` and ``after`` epochs.

    ``acted_contribution`` is the counterfactual contribution of the acted-on seed measured
    just before a FOSSILIZE or CULL (the seed may be gone afterwards).
    """
    cfg = config or RewardConfig()
    c = dict.fromkeys(REWARD_COMPONENTS, 0.0)
    delta = after.val_accuracy - before.val_accuracy
    c["base_acc_delta"] = cfg.acc_scale * delta
    blended = [
        s.state
        for s in env.slots
        if s.state is not None and s.state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY)
    ]
    cfs = [st.metrics.counterfactual_contribution for st in blended]
    known = [cf for cf in cfs if cf is not None]
    c["bounded_attribution"] = _clip(0.02 * sum(known), 0.3)
    c["compute_rent"] = -cfg.rent_scale * env.seed_params() / max(param_budget, 1)
    live = [s.state for s in env.slots if s.has_live_seed and s.state is not None]
    c["seed_contribution"] = _clip(0.02 * sum(st.metrics.accuracy_delta for st in live), 0.3)
    acted = env.model.slot(slot_id).state
    if acted is not None and acted.metrics.counterfactual_contribution is not None:
        c["counterfactual"] = _clip(0.05 * acted.metrics.counterfactual_contribution, 0.5)
    for st in blended:
        cf = st.metrics.counterfactual_contribution
        if cf is not None and cf < 0:
            key = "blending_warning" if st.stage is SeedStage.BLENDING else "probation_warning"
            c[key] -= 0.1 if key == "blending_warning" else 0.2
    if op is Op.FOSSILIZE and success:
        c["fossilize_bonus"] = 0.5 + _clip(0.1 * (acted_contribution or 0.0), 0.5)
    if op is Op.CULL and success:
        lost = max(acted_contribution or 0.0, 0.0)  # culling a helpful seed costs more
        c["cull_penalty"] = -0.05 - _clip(0.1 * lost, 0.5)
    if terminal:
        c["terminal_bonus"] = cfg.terminal_scale * after.val_accuracy
    return c
