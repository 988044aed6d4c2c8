"""Shared fixtures: every test starts and ends with a fresh process-wide hub."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from esper.nissa import reset_hub


@pytest.fixture(autouse=True)
def _fresh_global_hub() -> Iterator[None]:
    reset_hub()
    yield
    reset_hub(timeout=10)
