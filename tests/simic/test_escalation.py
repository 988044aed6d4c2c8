"""Escalation: debug detail for the env where something went wrong, for N epochs, bracketed by
TELEMETRY_LEVEL_CHANGED; a policy anomaly escalates every env."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esper.leyline import (
    RunInterrupted,
    TelemetryConfig,
    TelemetryEvent,
    TelemetryEventType,
    TelemetryLevel,
    example_payload,
    make_event,
    validate_payload,
)
from esper.nissa import read_events
from esper.runs.config import StopRequest
from esper.simic.escalation import Escalation, env_trigger
from esper.tolaria.environment import Fault
from tests._stack import wait_until

ET = TelemetryEventType
NORMAL = TelemetryConfig(TelemetryLevel.NORMAL)


def _changes(events: list[TelemetryEvent]) -> list[tuple[int | None, str, str, int]]:
    out = []
    for e in events:
        assert e.event_type is ET.TELEMETRY_LEVEL_CHANGED
        validate_payload(e.event_type, e.data)
        d = e.data
        out.append((d["env_id"], d["from_level"], d["to_level"], d["until_epoch"]))
    return out


def _epochs(esc: Escalation, first: int, last: int) -> None:
    for epoch in range(first, last + 1):
        esc.begin_epoch(epoch)


def test_an_env_trigger_escalates_that_env_for_n_epochs_from_its_own() -> None:
    events: list[TelemetryEvent] = []
    esc = Escalation(3, NORMAL, events.append)
    esc.begin_batch()
    _epochs(esc, 1, 5)
    esc.trigger(0, "GRADIENT_ANOMALY:host:exploding", "e1")
    assert [esc.debug(0, e) for e in range(1, 10)] == [False] * 4 + [True] * 3 + [False] * 2
    assert not any(esc.debug(1, e) for e in range(1, 10))
    assert _changes(events) == [(0, "normal", "debug", 7)]
    assert events[0].data["trigger_event_id"] == "e1"
    _epochs(esc, 6, 8)  # the rewards of epoch 7's decisions come with epoch 8
    assert len(events) == 1
    esc.begin_epoch(9)
    assert _changes(events)[1] == (0, "debug", "normal", 7)


def test_a_trigger_during_a_window_extends_it_without_a_new_bracket() -> None:
    events: list[TelemetryEvent] = []
    esc = Escalation(3, NORMAL, events.append)
    esc.begin_batch()
    _epochs(esc, 1, 5)
    esc.trigger(2, "GOVERNOR_ROLLBACK:nan_loss", "a")
    esc.begin_epoch(6)
    esc.trigger(2, "GRADIENT_ANOMALY:seed:vanishing", "b")
    assert [esc.debug(2, e) for e in range(4, 10)] == [False, True, True, True, True, False]
    _epochs(esc, 7, 10)
    assert _changes(events) == [(2, "normal", "debug", 7), (2, "debug", "normal", 8)]


def test_the_end_of_the_episode_closes_every_window() -> None:
    events: list[TelemetryEvent] = []
    esc = Escalation(5, NORMAL, events.append)
    esc.begin_batch()
    _epochs(esc, 1, 7)
    esc.trigger(1, "SEED_CULLED:blend_regression", None)
    esc.end_batch()
    assert _changes(events) == [(1, "normal", "debug", 11), (1, "debug", "normal", 11)]
    esc.begin_batch()  # the next episode starts at the run's level
    assert not esc.debug(1, 1)


def test_a_policy_trigger_escalates_every_env_at_the_start_of_the_next_batch() -> None:
    events: list[TelemetryEvent] = []
    esc = Escalation(2, NORMAL, events.append)
    esc.begin_batch()
    esc.end_batch()
    esc.trigger_policy("GRADIENT_ANOMALY:policy:exploding", "p1")
    esc.trigger_policy("PPO_UPDATE_COMPLETED:entropy_collapse", None)  # one window
    assert events == []
    esc.begin_batch()
    assert all(esc.debug(env, epoch) for env in (0, 7) for epoch in (1, 2))
    assert not esc.debug(0, 3)
    _epochs(esc, 1, 4)
    assert _changes(events) == [(None, "normal", "debug", 2), (None, "debug", "normal", 2)]
    assert events[0].data["reason"] == "GRADIENT_ANOMALY:policy:exploding"


@pytest.mark.parametrize(
    ("epochs", "config", "always_debug"),
    [
        (0, NORMAL, False),
        (3, TelemetryConfig(TelemetryLevel.OFF), False),
        (3, TelemetryConfig(TelemetryLevel.MINIMAL), False),
        (3, TelemetryConfig(TelemetryLevel.OFF, lifecycle_only=True), False),
        (3, TelemetryConfig(TelemetryLevel.DEBUG), True),
    ],
    ids=["zero", "off", "minimal", "lifecycle-only", "debug"],
)
def test_nothing_escalates_at_zero_off_minimal_lifecycle_only_or_debug(
    epochs: int, config: TelemetryConfig, always_debug: bool
) -> None:
    events: list[TelemetryEvent] = []
    esc = Escalation(epochs, config, events.append)
    sink: list[TelemetryEvent] = []
    append = sink.append
    assert esc.watch(0, append) is append  # nothing wrapped, nothing added
    esc.begin_batch()
    esc.trigger(0, "GOVERNOR_ROLLBACK:nan_loss", None)
    esc.trigger_policy("GRADIENT_ANOMALY:policy:nan", None)
    esc.end_batch()
    esc.begin_batch()
    assert events == []
    assert esc.debug(0, 1) is always_debug


def _anomaly(scope: str, kind: str = "exploding") -> TelemetryEvent:
    return make_event(ET.GRADIENT_ANOMALY, example_payload(ET.GRADIENT_ANOMALY, scope=scope,
                                                            kind=kind))  # fmt: skip


def test_the_triggers_of_an_env() -> None:
    culled = example_payload(ET.SEED_CULLED, reason="blend_regression")
    rollback = example_payload(ET.GOVERNOR_ROLLBACK, reason="nan_loss")
    assert env_trigger(_anomaly("host")) == "GRADIENT_ANOMALY:host:exploding"
    assert env_trigger(_anomaly("seed", "vanishing")) == "GRADIENT_ANOMALY:seed:vanishing"
    assert env_trigger(_anomaly("policy")) is None  # the policy's is every env's
    assert env_trigger(make_event(ET.GOVERNOR_ROLLBACK, rollback)) == "GOVERNOR_ROLLBACK:nan_loss"
    assert env_trigger(make_event(ET.SEED_CULLED, culled)) == "SEED_CULLED:blend_regression"
    controller = example_payload(ET.SEED_CULLED, reason="controller")
    assert env_trigger(make_event(ET.SEED_CULLED, controller)) is None


def test_the_watched_sink_delivers_the_trigger_before_the_level_change() -> None:
    out: list[TelemetryEvent] = []
    esc = Escalation(3, NORMAL, out.append)
    esc.begin_batch()
    esc.begin_epoch(2)
    watched = esc.watch(4, out.append)
    anomaly = _anomaly("host")
    watched(anomaly)
    assert [e.event_type for e in out] == [ET.GRADIENT_ANOMALY, ET.TELEMETRY_LEVEL_CHANGED]
    assert out[1].data["trigger_event_id"] == anomaly.event_id
    assert out[1].data["env_id"] == 4


# -- real runs ------------------------------------------------------------------------------------

DEBUG_KINDS = {"last_action"}


def _is_debug(e: TelemetryEvent) -> bool:
    return e.event_type is ET.REWARD_COMPUTED or (
        e.event_type is ET.ANALYTICS_SNAPSHOT and e.data.get("kind") in DEBUG_KINDS
    )


def _train(tmp_path: Path, *flags: str) -> list[TelemetryEvent]:
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "ppo", "--n-envs", "2", "--episodes", "4",
         "--max-epochs", "8", "--seed", "3", "--telemetry-dir", str(tmp_path), *flags],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return read_events(next(tmp_path.iterdir()), strict=True).events


def _windows(events: list[TelemetryEvent]) -> list[tuple[int | None, int, int, str, int, int]]:
    """(env, first epoch, last epoch, reason, index of start, index of end) of each window,
    checking that each debug event lies inside a window of its env that is open."""
    open_: dict[int | None, tuple[int, int, str, int]] = {}
    done = []
    for i, e in enumerate(events):
        if e.event_type is ET.TELEMETRY_LEVEL_CHANGED:
            d = e.data
            assert e.epoch is not None
            if d["to_level"] == "debug":
                assert d["env_id"] not in open_
                open_[d["env_id"]] = (e.epoch, d["until_epoch"], d["reason"], i)
            else:
                first, last, reason, start = open_.pop(d["env_id"])
                assert d["until_epoch"] == last
                done.append((d["env_id"], first, last, reason, start, i))
        elif _is_debug(e):
            env = e.data["env_id"]
            window = open_.get(env) or open_.get(None)
            assert window is not None, f"debug event outside a window: {e}"
            assert window[0] <= e.epoch <= window[1]  # type: ignore[operator]
    assert open_ == {}
    return done


@pytest.mark.slow
def test_an_exploding_gradient_escalates_its_env_for_exactly_its_epochs(tmp_path: Path) -> None:
    events = _train(tmp_path, "--inject-fault", "exploding-gradients@5", "--escalate-epochs", "3")
    windows = _windows(events)
    (started,) = [e for e in events if e.event_type is ET.TRAINING_STARTED]
    assert started.data["escalate_epochs"] == 3
    faulted = [w for w in windows if w[0] == 0 and w[3] == "GRADIENT_ANOMALY:host:exploding"]
    assert [(w[1], w[2]) for w in faulted] == [(5, 7)] * 2  # each batch's episode of env 0
    for _env, _first, _last, _reason, start, end in faulted:
        inside = [e for e in events[start:end] if _is_debug(e) and e.data["env_id"] == 0]
        by_kind = {(e.event_type.name, e.epoch) for e in inside}
        assert by_kind == {(kind, epoch) for kind in ("REWARD_COMPUTED", "ANALYTICS_SNAPSHOT")
                           for epoch in (5, 6, 7)}  # fmt: skip
    # Nowhere else: every debug event lies in a window (checked by _windows).
    assert sum(_is_debug(e) for e in events) > 0


@pytest.mark.slow
def test_without_escalation_nothing_is_raised(tmp_path: Path) -> None:
    events = _train(tmp_path, "--inject-fault", "exploding-gradients@5", "--escalate-epochs", "0")
    assert not [e for e in events if e.event_type is ET.TELEMETRY_LEVEL_CHANGED]
    assert not [e for e in events if _is_debug(e)]
    (started,) = [e for e in events if e.event_type is ET.TRAINING_STARTED]
    assert started.data["escalate_epochs"] == 0


@pytest.mark.slow
def test_a_rollback_escalates_its_env(tmp_path: Path) -> None:
    events = _train(tmp_path, "--inject-fault", "nan-loss@3")
    windows = _windows(events)
    assert any(w[0] == 0 and w[1] == 3 and "nan" in w[3] for w in windows), windows
    rollbacks = [e for e in events if e.event_type is ET.GOVERNOR_ROLLBACK]
    assert rollbacks


def test_sanctum_marks_the_escalated_envs_and_the_whole_run() -> None:
    from esper.karn.sanctum import SanctumAggregator
    from esper.karn.sanctum.app import env_telemetry

    out: list[TelemetryEvent] = []
    esc = Escalation(2, NORMAL, out.append)
    aggregator = SanctumAggregator()
    for env_id in (0, 1):
        data = example_payload(ET.EPOCH_COMPLETED, "env", env_id=env_id, seeds={})
        aggregator.process_event(make_event(ET.EPOCH_COMPLETED, data))
    esc.begin_batch()
    esc.begin_epoch(1)
    esc.trigger(1, "GOVERNOR_ROLLBACK:nan_loss", None)
    for e in out:
        aggregator.process_event(e)
    snap = aggregator.get_snapshot()
    assert [env_telemetry(snap, snap.envs[i]) for i in (0, 1)] == ["", "DEBUG (escalated)"]
    esc.end_batch()
    esc.trigger_policy("GRADIENT_ANOMALY:policy:nan", None)
    esc.begin_batch()
    for e in out[1:]:
        aggregator.process_event(e)
    snap = aggregator.get_snapshot()
    assert [env_telemetry(snap, snap.envs[i]) for i in (0, 1)] == ["DEBUG (escalated)"] * 2


@pytest.mark.slow
def test_a_loss_spike_escalates_its_env_without_a_rollback(tmp_path: Path) -> None:
    events = _train(tmp_path, "--max-epochs", "12", "--inject-fault", "loss-spike@10")
    spikes = [e for e in events if e.event_type is ET.GRADIENT_ANOMALY
              and e.data["kind"] == "loss_spike"]  # fmt: skip
    assert [(e.data["env_id"], e.epoch) for e in spikes] == [(0, 10)] * 2  # two batches
    for spike in spikes:
        assert spike.data["value"] > spike.data["threshold"]
    assert not [e for e in events if e.event_type is ET.GOVERNOR_ROLLBACK]
    windows = _windows(events)
    spiked = [w for w in windows if w[3] == "GRADIENT_ANOMALY:host:loss_spike"]
    assert [(w[0], w[1], w[2]) for w in spiked] == [(0, 10, 12)] * 2


def test_summarize_lists_each_anomaly_with_the_window_of_detail_it_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esper.nissa import FileOutput
    from esper.scripts import cli

    out = FileOutput(tmp_path / "e.jsonl")
    esc = Escalation(3, NORMAL, out.emit)
    esc.begin_batch()
    _epochs(esc, 1, 4)
    spike = make_event(ET.GRADIENT_ANOMALY, example_payload(
        ET.GRADIENT_ANOMALY, scope="host", kind="loss_spike", env_id=1, value=0.57,
        threshold=0.31), epoch=4)  # fmt: skip
    esc.watch(1, out.emit)(spike)
    lonely = make_event(
        ET.GOVERNOR_ROLLBACK, example_payload(ET.GOVERNOR_ROLLBACK, reason="nan_loss"), epoch=5
    )
    out.emit(lonely)  # not through an escalating sink: no window
    _epochs(esc, 5, 8)
    out.close()
    assert cli.main(["telemetry", "summarize", str(tmp_path / "e.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "what went wrong, when, and where the record holds its detail:" in text
    assert (
        "env 1 epoch 4: host loss_spike, 0.57 (threshold 0.31); env 1 at debug, epochs 4..6" in text
    )
    assert "epoch 5: rollback on nan_loss (loss 0.5); no escalation" in text


def test_prometheus_shows_each_env_escalated_while_its_window_is_open() -> None:
    from esper.nissa.prometheus import PrometheusOutput

    prom = PrometheusOutput(cuda=False)
    for env_id in (0, 1):
        data = example_payload(ET.EPOCH_COMPLETED, "env", env_id=env_id, seeds={})
        prom.emit(make_event(ET.EPOCH_COMPLETED, data))

    def escalated() -> dict[str, float]:
        family = next(
            m for m in prom.registry.collect() if m.name == "esper_env_telemetry_escalated"
        )
        return {s.labels["env_id"]: s.value for s in family.samples}

    assert escalated() == {"0": 0.0, "1": 0.0}  # every env seen, at its level
    esc = Escalation(2, NORMAL, prom.emit)
    esc.begin_batch()
    esc.begin_epoch(1)
    esc.trigger(1, "GOVERNOR_ROLLBACK:nan_loss", None)
    assert escalated() == {"0": 0.0, "1": 1.0}
    esc.end_batch()
    assert escalated() == {"0": 0.0, "1": 0.0}
    esc.trigger_policy("GRADIENT_ANOMALY:policy:nan", None)
    esc.begin_batch()
    assert escalated() == {"0": 1.0, "1": 1.0}
    _epochs(esc, 1, 4)
    assert escalated() == {"0": 0.0, "1": 0.0}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian package tmux)")
def test_sanctum_on_a_terminal_draws_the_histories_and_the_escalated_envs(
    tmp_path: Path,
) -> None:
    """A real pseudo-terminal (tmux) running ``esper sanctum`` over a recorded run with a
    loss spike: the sparklines and the escalated env are on the screen."""
    _train(tmp_path / "runs", "--max-epochs", "12", "--inject-fault", "loss-spike@10")
    session = f"esper-test-{os.getpid()}"
    cmd = f"{sys.executable} -m esper.scripts.cli sanctum {tmp_path / 'runs'}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "180", "-y", "50", cmd],
                   check=True)  # fmt: skip
    try:

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True, check=False).stdout  # fmt: skip

        wanted = ("policy: entropy", "env 0 val accuracy", "env 1 host grad norm", "escalated")
        wait_until(lambda: all(w in screen() for w in wanted), 60, "Sanctum's histories drawn")
        text = screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert "env 0 val accuracy" in text
    assert "env 1 host grad norm" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█")  # the sparklines themselves
    row = next(line for line in text.splitlines() if line.split()[:1] == ["0"])
    assert "escalated 2x" in row  # env 0's loss spike opened a window in each of two batches


def test_a_non_finite_point_is_drawn_at_the_top_of_its_sparkline() -> None:
    from esper.karn.sanctum.app import plottable

    assert plottable([1.0, math.nan, 0.5, math.inf]) == [1.0, 1.0, 0.5, 1.0]
    assert plottable([math.nan]) == [0.0]
    assert plottable([]) == []


class _StopAfter(StopRequest):
    """A stop request that comes true at the ``n``-th epoch boundary it is asked about."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.asked = 0
        self.n = n

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked >= self.n


@pytest.mark.slow
def test_a_run_stopped_inside_a_window_closes_it_before_it_ends() -> None:
    """The window's end is in the record even when the run stops in it (it used to be left
    open when the episode did not reach its end)."""
    from esper.nissa import InMemoryOutput
    from esper.runs import RunConfig, run_training

    hub = InMemoryOutput()
    config = RunConfig(mode="ppo", episodes=1, n_envs=1, max_epochs=8, seed=3,
                       faults=(Fault("nan-loss", 2),), escalate_epochs=5)  # fmt: skip
    config.stop = _StopAfter(4)  # stops before epoch 4: inside the window 2..6
    with pytest.raises(RunInterrupted):
        run_training(config, hub=hub)
    types = [e.event_type for e in hub.events]
    changes = [e for e in hub.events if e.event_type is ET.TELEMETRY_LEVEL_CHANGED]
    assert [(c.data["to_level"], c.data["until_epoch"]) for c in changes] == [
        ("debug", 6),
        ("normal", 6),
    ]
    assert types.index(ET.TELEMETRY_LEVEL_CHANGED, types.index(changes[0].event_type) + 1) < (
        types.index(ET.TRAINING_COMPLETED)
    )


def test_summarize_says_when_the_record_ends_inside_a_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esper.nissa import FileOutput
    from esper.scripts import cli

    out = FileOutput(tmp_path / "e.jsonl")
    esc = Escalation(3, NORMAL, out.emit)
    esc.begin_batch()
    _epochs(esc, 1, 2)
    esc.watch(0, out.emit)(_anomaly("host"))
    out.close()  # killed before the window closed
    assert cli.main(["telemetry", "summarize", str(tmp_path / "e.jsonl")]) == 0
    assert "env 0 at debug from epoch 2; the record ends inside the window" in (
        capsys.readouterr().out
    )
