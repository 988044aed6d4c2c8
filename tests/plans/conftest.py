"""Fixtures of the plan tests: how the user's own tests check payloads, and the real runs
that the plans' prose behaviours are checked on.

The user's tests (``test_plan_*.py``) run with payloads checked where users' runs check them:
at the hub. The rest of the suite checks every payload where ``make_event`` builds it (strict
mode), so a field that breaks the catalogue fails the test that emits it. The plans' tests
were written before the payload catalogue existed (SPEC.md moved payload validation into it):
they hand the emitters Mocks and partial metrics, and read what reaches a mocked hub. In a
user's run the hub's pump thread is what checks payloads (a mismatch is counted, named in the
summary and fails the run), so these tests see exactly what a user's emitter does; the
emitters' real payloads are checked in strict mode by the real runs here and elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from esper.leyline import TelemetryEvent, set_strict_payloads, strict_payloads
from esper.nissa import read_events


@pytest.fixture(autouse=True)
def _user_tests_check_payloads_at_the_hub(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.module.__name__.rsplit(".", 1)[-1].startswith("test_plan_"):
        yield
        return
    previous = strict_payloads()
    set_strict_payloads(False)
    yield
    set_strict_payloads(previous)


@dataclass(frozen=True)
class Run:
    """A finished real training run: its events (read back strictly) and its output."""

    events: list[TelemetryEvent]
    stdout: str
    stderr: str
    directory: Path
    args: tuple[str, ...]

    def of(self, event_type: str, kind: str | None = None) -> list[TelemetryEvent]:
        return [
            e
            for e in self.events
            if e.event_type.name == event_type and (kind is None or e.data.get("kind") == kind)
        ]


def train(tmp: Path, mode: str, *flags: str) -> Run:
    """``python -m esper.scripts.train MODE FLAGS --telemetry-dir TMP``; it must succeed."""
    args = (mode, *flags, "--telemetry-dir", str(tmp))
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (directory,) = tmp.iterdir()
    events = read_events(directory, strict=True).events
    return Run(events, proc.stdout, proc.stderr, directory, args)


PPO_FLAGS = (
    "--n-envs", "2", "--episodes", "4", "--max-epochs", "15", "--seed", "6",
    "--telemetry-level", "debug", "--entropy-anneal", "4",
    "--inject-fault", "nan-loss@5", "--inject-fault", "exploding-gradients@8",
)  # fmt: skip
"""A debug-level PPO run of two batches with both faults, in which seeds are germinated,
culled (by the controller, the gates and a rollback) and fossilized (seed 6, deterministic
on CPU)."""


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train(tmp_path_factory.mktemp("plans-ppo"), "ppo", *PPO_FLAGS)
