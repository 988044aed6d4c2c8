"""HeuristicTamiyo: germinate on a plateau, cull what does not help, fossilize what does."""

from __future__ import annotations

from dataclasses import dataclass

from esper.kasmina import BLUEPRINT_IDS, SeedSlot, build_seed, count_params
from esper.leyline import BlendMode, Op, SeedStage
from esper.tamiyo.decision import Decision

_GROWING = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)


@dataclass(slots=True)
class HeuristicConfig:
    min_improvement: float = 0.3
    """Points of contribution a probationary seed needs to be fossilized."""
    harm_threshold: float = -1.0
    """A blended seed whose counterfactual contribution is below this is culled."""
    min_epochs_left: int = 10
    """Do not germinate when fewer epochs remain than a lifecycle needs."""
    slot_order: tuple[str, ...] = ("mid", "late", "early")
    blueprints: tuple[str, ...] = BLUEPRINT_IDS
    blend: BlendMode = BlendMode.SIGMOID


class HeuristicTamiyo:
    """A fixed policy, one decision per env per epoch, in priority order:

    1. fossilize a seed that finished probation with a positive contribution, or cull it when
       its contribution is negative;
    2. cull a blended seed whose alpha=0 counterfactual shows it hurts accuracy;
    3. on a plateau, with no seed growing and a dormant slot free, germinate the next
       blueprint (round robin) that fits the parameter budget;
    4. otherwise wait.
    """

    def __init__(self, config: HeuristicConfig | None = None, param_budget: int = 60_000):
        self.config = config or HeuristicConfig()
        self.param_budget = param_budget
        self._next_blueprint = 0

    @staticmethod
    def _contribution(slot: SeedSlot) -> float:
        assert slot.state is not None
        m = slot.state.metrics
        cf = m.counterfactual_contribution
        return cf if cf is not None else m.accuracy_delta

    def decide(
        self,
        slots: list[SeedSlot],
        *,
        plateau: bool,
        inner_epoch: int,
        max_epochs: int,
        seed_params: int,
    ) -> Decision:
        cfg = self.config
        by_id = {s.slot_id: s for s in slots}
        for slot in slots:
            state = slot.state
            if state is None:
                continue
            if (
                state.stage is SeedStage.PROBATIONARY
                and state.epochs_in_stage >= slot.lifecycle.probation_epochs
            ):
                contribution = self._contribution(slot)
                if contribution >= cfg.min_improvement:
                    return Decision(Op.FOSSILIZE, slot.slot_id, reason="proven improvement")
                if contribution < 0:
                    return Decision(Op.CULL, slot.slot_id, reason="no improvement")
            cf = state.metrics.counterfactual_contribution
            if (
                state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY)
                and cf is not None
                and cf < cfg.harm_threshold
            ):
                return Decision(Op.CULL, slot.slot_id, reason="hurts accuracy")
        growing = any(s.state is not None and s.state.stage in _GROWING for s in slots)
        if plateau and not growing and max_epochs - inner_epoch >= cfg.min_epochs_left:
            free = [sid for sid in cfg.slot_order if sid in by_id and by_id[sid].is_dormant]
            if free:
                slot = by_id[free[0]]
                for _ in range(len(cfg.blueprints)):
                    blueprint = cfg.blueprints[self._next_blueprint % len(cfg.blueprints)]
                    self._next_blueprint += 1
                    size = count_params(build_seed(blueprint, slot.channels))
                    if seed_params + size <= self.param_budget:
                        return Decision(
                            Op.GERMINATE, slot.slot_id, blueprint, cfg.blend, reason="plateau"
                        )
        return Decision(Op.WAIT, slots[0].slot_id, reason="nothing to do")
