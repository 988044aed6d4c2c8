"""SeedTelemetry and its 10 features (SPEC 3.5)."""

from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest

from esper.leyline import SeedTelemetry


def test_defaults_match_the_contract() -> None:
    t = SeedTelemetry(seed_id="seed_0")
    assert (t.blueprint_id, t.layer_id, t.gradient_norm, t.gradient_health) == ("", "", 0.0, 1.0)
    assert (t.has_vanishing, t.has_exploding, t.accuracy, t.accuracy_delta) == (False, False, 0, 0)
    assert (t.epochs_in_stage, t.stage, t.alpha, t.epoch, t.max_epochs) == (0, 1, 0.0, 0, 25)
    assert t.captured_at.tzinfo is UTC
    assert "__slots__" in SeedTelemetry.__dict__
    assert [f.name for f in dataclasses.fields(SeedTelemetry)][:3] == [
        "seed_id", "blueprint_id", "layer_id",
    ]  # fmt: skip


def test_features_are_ten_floats_in_contract_order() -> None:
    t = SeedTelemetry(
        seed_id="s", gradient_norm=4.0, gradient_health=0.8, has_vanishing=True,
        has_exploding=False, epochs_in_stage=10, accuracy=75.0, accuracy_delta=2.5, stage=4,
        alpha=0.3, epoch=5, max_epochs=20,
    )  # fmt: skip
    assert SeedTelemetry.feature_dim() == 10
    assert t.to_features() == pytest.approx([0.4, 0.8, 1.0, 0.0, 0.2, 0.75, 0.25, 0.5, 0.3, 0.25])


def test_features_saturate_and_clamp_while_the_raw_norm_stays_visible() -> None:
    t = SeedTelemetry(
        seed_id="s", gradient_norm=250.0, epochs_in_stage=80, accuracy_delta=-40.0, stage=10,
        epoch=3, max_epochs=0,
    )  # fmt: skip
    f = t.to_features()
    assert f[0] == 1.0
    assert t.gradient_norm == 250.0
    assert f[4] == 1.0
    assert f[6] == -1.0
    assert f[7] == 1.0
    assert f[9] == 3.0  # epoch / max(max_epochs, 1)
    assert SeedTelemetry(seed_id="s", stage=0).to_features()[7] == 0.0
