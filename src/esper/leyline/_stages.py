"""The seed lifecycle: stages and the transitions between them."""

from __future__ import annotations

from enum import IntEnum


class SeedStage(IntEnum):
    """Where a seed is in its life. Value 5 is reserved (a retired stage) and never used."""

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10


VALID_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.UNKNOWN: frozenset({SeedStage.DORMANT}),
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
    SeedStage.BLENDING: frozenset({SeedStage.PROBATIONARY, SeedStage.CULLED}),
    SeedStage.PROBATIONARY: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset({SeedStage.EMBARGOED}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}

_ACTIVE = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY}
)
_FAILURE = frozenset({SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING})


def is_valid_transition(from_stage: SeedStage, to_stage: SeedStage) -> bool:
    """True when the lifecycle allows going from ``from_stage`` to ``to_stage``."""
    return to_stage in VALID_TRANSITIONS.get(from_stage, frozenset())


def is_terminal_stage(stage: SeedStage) -> bool:
    """True for a stage with no way out (FOSSILIZED)."""
    return not VALID_TRANSITIONS.get(stage)


def is_active_stage(stage: SeedStage) -> bool:
    """True while a seed is alive in its slot and not yet permanent."""
    return stage in _ACTIVE


def is_failure_stage(stage: SeedStage) -> bool:
    """True for the stages a culled seed passes through."""
    return stage in _FAILURE
