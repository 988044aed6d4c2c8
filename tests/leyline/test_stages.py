"""Seed stages and transitions (SPEC 3.4)."""

from __future__ import annotations

import pytest

from esper.leyline import (
    VALID_TRANSITIONS,
    SeedStage,
    is_active_stage,
    is_failure_stage,
    is_terminal_stage,
    is_valid_transition,
)

S = SeedStage


def test_stage_values_match_the_contract() -> None:
    assert {s.name: int(s) for s in SeedStage} == {
        "UNKNOWN": 0, "DORMANT": 1, "GERMINATED": 2, "TRAINING": 3, "BLENDING": 4,
        "PROBATIONARY": 6, "FOSSILIZED": 7, "CULLED": 8, "EMBARGOED": 9, "RESETTING": 10,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.UNKNOWN, S.DORMANT), (S.DORMANT, S.GERMINATED), (S.GERMINATED, S.TRAINING),
        (S.TRAINING, S.BLENDING), (S.BLENDING, S.PROBATIONARY), (S.PROBATIONARY, S.FOSSILIZED),
        (S.GERMINATED, S.CULLED), (S.TRAINING, S.CULLED), (S.BLENDING, S.CULLED),
        (S.PROBATIONARY, S.CULLED), (S.CULLED, S.EMBARGOED), (S.EMBARGOED, S.RESETTING),
        (S.RESETTING, S.DORMANT),
    ],
)  # fmt: skip
def test_allowed_transitions_are_valid(a: SeedStage, b: SeedStage) -> None:
    assert is_valid_transition(a, b)


def test_exactly_the_contract_transitions_are_allowed() -> None:
    allowed = sum(len(v) for v in VALID_TRANSITIONS.values())
    assert allowed == 13
    assert not is_valid_transition(S.DORMANT, S.TRAINING)
    assert not is_valid_transition(S.FOSSILIZED, S.CULLED)
    assert not is_valid_transition(S.TRAINING, S.PROBATIONARY)


def test_stage_helpers() -> None:
    assert [s for s in SeedStage if is_terminal_stage(s)] == [S.FOSSILIZED]
    assert [s for s in SeedStage if is_active_stage(s)] == [
        S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY,
    ]  # fmt: skip
    assert [s for s in SeedStage if is_failure_stage(s)] == [S.CULLED, S.EMBARGOED, S.RESETTING]
