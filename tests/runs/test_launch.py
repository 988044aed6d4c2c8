"""esper.runs.launch: a run beside a foreground UI."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from esper.nissa import InMemoryOutput, NissaHub
from esper.nissa.backends import BackendSpec
from esper.runs.config import RunConfig
from esper.runs.launch import TrainRequest, launch


class BrokenUI:
    """A UI that fails as soon as it runs (a refresh raising, a terminal gone)."""

    def __init__(self) -> None:
        self.events = InMemoryOutput()

    def attach(self, hub: NissaHub) -> None:
        hub.add_backend(self.events)

    def run(self, stop: Callable[[str], None]) -> BaseException | None:
        raise RuntimeError("the screen went away")


@pytest.mark.slow
def test_a_failing_ui_neither_ends_the_run_nor_fails_it() -> None:
    """The UI's failure is said; training runs to its end, which the record and the exit
    status both say (it used to exit 1 with training still running on its thread)."""
    warned: list[str] = []
    ui = BrokenUI()
    request = TrainRequest(
        config=RunConfig(mode="heuristic", max_epochs=2),
        spec=lambda _run_id, _ranks, _run_dir: BackendSpec(),
        ui=ui,
        say=lambda _line: None,
        warn=warned.append,
    )
    assert launch(request) == 0
    assert any("the UI failed (RuntimeError: the screen went away)" in w for w in warned)
    (done,) = [e for e in ui.events.events if e.event_type.name == "TRAINING_COMPLETED"]
    assert done.data["status"] == "completed"
