"""One run across ranks, with real processes: ``torchrun`` on loopback (gloo), a real
Prometheus scraping every rank through file_sd, the OTLP receiver, a two-node rendezvous
with two launchers, and a rank killed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from esper.karn.grafana import DASHBOARDS, panel_queries
from esper.karn.sanctum.app import run_header
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import read_events
from esper.nissa.otel import run_trace_ids
from esper.scripts import sanctum, telemetry, train
from tests._otlp import OTLPReceiver
from tests._stack import (
    REPO,
    free_port,
    panel_promql,
    prometheus,
    query,
    query_range,
    serving_blocks,
    wait_until,
)

ET = TelemetryEventType
pytestmark = pytest.mark.slow

RUN = ["ppo", "--n-envs", "4", "--max-epochs", "5", "--seed", "3"]
"""A short PPO run of 4 envs: 2 per rank on 2 ranks."""


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "esper.scripts.train"]


def standalone(nproc: int = 2) -> list[str]:
    return torchrun("--standalone", "--nproc-per-node", str(nproc))


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def by_type(events: list[TelemetryEvent], t: TelemetryEventType) -> list[TelemetryEvent]:
    return [e for e in events if e.event_type is t]


@dataclass
class TwoRanks:
    """A 2-rank run scraped by a real Prometheus and traced to the OTLP receiver, and a
    2-rank run resumed from its checkpoint."""

    proc: subprocess.CompletedProcess[str]
    run_dir: Path
    events: list[TelemetryEvent]
    prometheus: str
    started: float
    finished: float
    spans: list[Any]
    resumed: subprocess.CompletedProcess[str]
    resumed_events: list[TelemetryEvent]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRanks]:
    tmp = tmp_path_factory.mktemp("ranks")
    sd = tmp / "targets"
    receiver = OTLPReceiver()
    try:
        # Every 500 ms: the run trains for about 2 s, and rate() needs two samples of a series.
        with prometheus(tmp / "prom", sd_dir=sd, interval="500ms") as base:
            started = time.time()
            proc = run([
                *standalone(), *RUN, "--episodes", "8", "--telemetry-dir", str(tmp / "runs"),
                "--metrics-port", "0", "--metrics-sd-dir", str(sd), "--metrics-linger", "30",
                "--otlp-endpoint", receiver.endpoint, "--save", str(tmp / "ckpt.pt"),
            ])  # fmt: skip
            finished = time.time()
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            (run_dir,) = (tmp / "runs").iterdir()
            resumed = run([
                *standalone(), *RUN, "--episodes", "4", "--resume", str(tmp / "ckpt.pt"),
                "--telemetry-dir", str(tmp / "resumed"),
            ])  # fmt: skip
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            yield TwoRanks(
                proc, run_dir, read_events(run_dir).events, base, started, finished,
                list(receiver.spans), resumed, read_events(tmp / "resumed").events,
            )  # fmt: skip
    finally:
        receiver.close()


def test_both_ranks_write_one_file_each_in_one_run_directory(two_ranks: TwoRanks) -> None:
    names = sorted(p.name for p in two_ranks.run_dir.iterdir())
    assert names == ["events.rank0.jsonl", "events.rank1.jsonl", "report.html"]
    assert Counter(e.rank for e in two_ranks.events).keys() == {0, 1}
    assert len({e.run_id for e in two_ranks.events}) == 1


def test_training_started_places_each_rank(two_ranks: TwoRanks) -> None:
    started = {e.rank or 0: e.data for e in by_type(two_ranks.events, ET.TRAINING_STARTED)}
    assert sorted(started) == [0, 1]
    for rank, d in started.items():
        assert (d["world_size"], d["rank"], d["local_rank"], d["node_rank"]) == (2, rank, rank, 0)
        assert d["restart_count"] == 0
        assert d["n_envs"] == 4
        assert d["local_n_envs"] == 2
        assert d["node"]
        assert d["threads_source"] == "auto"
        assert d["threads"] == max(1, d["cpu_cores"] // 2)  # the cores over 2 local ranks


def _env_epochs(events: list[TelemetryEvent]) -> dict[tuple[int, int], dict[int, TelemetryEvent]]:
    """(batch, epoch) -> env id -> its EPOCH_COMPLETED (an env's k-th epoch of 5 per episode
    is in batch k // 5)."""
    seen: dict[tuple[int, int], dict[int, TelemetryEvent]] = defaultdict(dict)
    done: Counter[int] = Counter()
    for e in by_type(events, ET.EPOCH_COMPLETED):
        if e.data["scope"] == "env":
            env = e.data["env_id"]
            seen[(done[env] // 5, e.data["inner_epoch"])][env] = e
            done[env] += 1
    return seen


def test_every_global_env_id_reports_every_epoch(two_ranks: TwoRanks) -> None:
    seen = _env_epochs(two_ranks.events)
    assert len(seen) == 2 * 5  # 2 batches of 5 epochs
    for epoch, envs in seen.items():
        assert {env: e.rank for env, e in envs.items()} == {0: 0, 1: 0, 2: 1, 3: 1}, epoch


def test_the_policy_is_identical_on_every_rank_after_every_update(two_ranks: TwoRanks) -> None:
    digests: dict[int, dict[int, str]] = defaultdict(dict)
    for e in by_type(two_ranks.events, ET.ANALYTICS_SNAPSHOT):
        if e.data["kind"] == "collectives":
            digests[e.data["batch_idx"]][e.rank or 0] = e.data["policy_digest"]
            assert e.data["calls"] >= 2
            assert e.data["wait_seconds"]["all_reduce_gradients"]
    assert sorted(digests) == [0, 1]
    for batch, per_rank in digests.items():
        assert sorted(per_rank) == [0, 1], batch
        assert len(set(per_rank.values())) == 1, per_rank
    assert digests[0][0] != digests[1][0]  # the update changed the policy


def test_batch_events_describe_the_whole_run_once(two_ranks: TwoRanks) -> None:
    events = two_ranks.events
    batches = by_type(events, ET.BATCH_EPOCH_COMPLETED)
    updates = by_type(events, ET.PPO_UPDATE_COMPLETED)
    assert [b.rank for b in batches] == [0, 0]
    assert [u.rank for u in updates] == [0, 0]
    seen = _env_epochs(events)
    for b in batches:
        d = b.data
        finals = seen[(d["batch_idx"], 5)]
        assert d["episodes_completed"] == 4 * (d["batch_idx"] + 1)
        assert d["env_accuracies"] == [finals[i].data["val_accuracy"] for i in range(4)]
        assert d["avg_accuracy"] == pytest.approx(sum(d["env_accuracies"]) / 4)
    dist = [e for e in by_type(events, ET.ANALYTICS_SNAPSHOT) if e.data["kind"] == "mask_hit_rates"]
    assert [e.data["mask_total"]["op"] for e in dist] == [4 * 4, 4 * 4]  # 4 envs x 4 decisions
    ended = {e.rank: e.data for e in by_type(events, ET.TRAINING_COMPLETED)}
    assert {r: d["status"] for r, d in ended.items()} == {0: "completed", 1: "completed"}
    assert {d["episodes_completed"] for d in ended.values()} == {8}
    germinated = sum(d["seeds_germinated"] for d in ended.values())
    assert germinated == len(by_type(events, ET.SEED_GERMINATED))
    assert f"seeds: {germinated} germinated" in two_ranks.proc.stdout


def test_the_merged_summary_counts_each_rank(
    two_ranks: TwoRanks, capsys: pytest.CaptureFixture[str]
) -> None:
    assert telemetry.main(["summarize", str(two_ranks.run_dir)]) == 0
    out = capsys.readouterr().out
    per_rank = Counter(e.rank for e in two_ranks.events)
    for rank in (0, 1):
        assert f"rank {rank} on " in out
        assert f": {per_rank[rank]} events, completed" in out
    assert f": {len(two_ranks.events)} events" in out.splitlines()[0]
    assert "status: completed" in out


def _rank_panels(dashboards: list[str]) -> list[tuple[str, str]]:
    """(title, query) of every panel of ``dashboards`` that reads the rank label (beyond
    the ``rank`` variable's filter)."""
    return [
        (title, expr)
        for name in dashboards
        for title, _desc, _uid, expr in panel_queries((REPO / "dashboards" / name).read_text())
        if "rank" in expr.replace('rank=~"$rank"', "")
    ]


def test_prometheus_scrapes_every_rank_and_the_rank_panels_show_both(
    two_ranks: TwoRanks,
) -> None:
    base, start = two_ranks.prometheus, two_ranks.started
    info = query_range(base, "esper_run_info", start, time.time())
    assert {s["metric"]["rank"] for s in info} == {"0", "1"}
    assert {s["metric"]["local_rank"] for s in info} == {"0", "1"}
    assert len({s["metric"]["instance"] for s in info}) == 2
    assert len({s["metric"]["node"] for s in info}) == 1
    # No series collides: each rank's env gauges are its own envs.
    envs = query_range(base, "esper_env_val_accuracy", start, time.time())
    assert {(s["metric"]["rank"], s["metric"]["env_id"]) for s in envs} == {
        ("0", "0"), ("0", "1"), ("1", "2"), ("1", "3")
    }  # fmt: skip
    waits = query_range(base, "esper_collective_wait_seconds_count", start, time.time())
    assert {(s["metric"]["rank"], s["metric"]["op"]) for s in waits} >= {
        ("0", "all_reduce_gradients"), ("1", "all_reduce_gradients"),
        ("0", "all_gather_batch"), ("1", "all_gather_batch"),
    }  # fmt: skip
    epoch_times = query_range(base, "esper_rank_epoch_seconds", start, time.time())
    assert {s["metric"]["rank"] for s in epoch_times} == {"0", "1"}
    # Episodes are counted once for the run, not once per rank.
    episodes = query(base, "sum(max_over_time(esper_episodes_completed_total[1h]))")
    assert float(episodes[0]["value"][1]) == 8
    rank_panels = _rank_panels(["esper-throughput.json"])
    assert len(rank_panels) >= 4
    for title, expr in rank_panels:
        promql = panel_promql(expr)

        def answered(q: str = promql) -> list[dict[str, Any]]:
            return query_range(base, q, start, time.time())

        def has_data(q: str = promql) -> bool:
            return bool(answered(q))

        wait_until(has_data, 30, f"data for {title}: {promql}")
        ranks = {s["metric"].get("rank") for s in answered()}
        assert ranks in ({"0", "1"}, {None}), (title, ranks)  # per rank, or over the ranks
    text = (REPO / "dashboards" / "esper-throughput.json").read_text()
    variable = json.loads(text)["templating"]["list"]
    (rank_var,) = [v for v in variable if v["name"] == "rank"]
    assert "esper_run_info" in rank_var["query"]


def test_every_dashboard_filters_on_the_rank() -> None:
    for name in DASHBOARDS:
        for title, _desc, uid, expr in panel_queries((REPO / "dashboards" / name).read_text()):
            if uid == "esper-prometheus" and "instance=~" in expr:
                assert 'rank=~"$rank"' in expr, (name, title)


def test_all_ranks_spans_join_one_trace(two_ranks: TwoRanks) -> None:
    spans = two_ranks.spans
    run_id = two_ranks.events[0].run_id
    assert run_id is not None
    trace_id, run_span_id = run_trace_ids(run_id)
    assert {s.trace_id for s in spans} == {f"{trace_id:032x}"}
    runs = [s for s in spans if s.name == "esper.run"]
    assert len(runs) == 1
    assert runs[0].span_id == f"{run_span_id:016x}"
    assert runs[0].resource["esper.rank"] == 0
    episodes = [s for s in spans if s.name == "esper.episode"]
    assert {s.resource["esper.rank"] for s in episodes} == {0, 1}
    assert {s.parent_span_id for s in episodes} == {runs[0].span_id}
    assert {s.attributes["esper.env.id"] for s in episodes} == {0, 1, 2, 3}
    for s in spans:
        assert s.resource["esper.world_size"] == 2
        assert s.resource["esper.restart_count"] == 0


def test_resume_restores_every_rank(two_ranks: TwoRanks) -> None:
    events = two_ranks.resumed_events
    loaded = {e.rank or 0: e.data for e in by_type(events, ET.CHECKPOINT_LOADED)}
    assert sorted(loaded) == [0, 1]
    assert {d["episodes_completed"] for d in loaded.values()} == {8}
    (batch,) = by_type(events, ET.BATCH_EPOCH_COMPLETED)
    assert batch.data["batch_idx"] == 2
    assert batch.data["episodes_completed"] == 12
    digests = {
        e.rank: e.data["policy_digest"]
        for e in by_type(events, ET.ANALYTICS_SNAPSHOT)
        if e.data["kind"] == "collectives"
    }
    assert len(set(digests.values())) == 1
    assert len(digests) == 2
    saved = by_type(two_ranks.events, ET.CHECKPOINT_SAVED)
    assert [e.rank for e in saved] == [0]  # rank 0 alone writes the checkpoint


def test_two_launchers_rendezvous_into_one_run_the_readers_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two nodes on loopback: two launchers meet at one c10d endpoint; each node writes its
    own run directory (named by rank 0's start time), and the readers merge them."""
    port = free_port()
    node = torchrun(
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"esper-test-{port}",
    )  # fmt: skip
    args = [*RUN, "--n-envs", "2", "--episodes", "2"]
    launchers = [
        subprocess.Popen(
            [*node, *args, "--telemetry-dir", str(tmp_path / f"node{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs
    dirs = [next((tmp_path / f"node{i}").iterdir()) for i in (0, 1)]
    assert dirs[0].name == dirs[1].name  # rank 0's timestamp names every node's directory
    replay = read_events(dirs)
    started = {e.rank or 0: e.data for e in by_type(replay.events, ET.TRAINING_STARTED)}
    assert sorted(started) == [0, 1]
    assert sorted(d["node_rank"] for d in started.values()) == [0, 1]
    assert [r.state for r in replay.ranks] == ["completed", "completed"]
    assert replay.status.state == "completed"
    assert len({e.run_id for e in replay.events}) == 1
    # One node's directory alone: the other node's rank is reported missing.
    alone = read_events(dirs[0])
    assert [r.state for r in alone.ranks].count("missing") == 1
    assert alone.status.state == "partial"  # not a verdict on a run it cannot see whole
    aggregator, problems = sanctum.load(dirs)
    assert not problems
    snapshot = aggregator.get_snapshot()
    assert sorted(snapshot.envs) == [0, 1]  # one env from each node
    assert snapshot.run_config.rank == 0
    assert snapshot.run_config.world_size == 2
    assert "ranks 2 (1 envs each)  restarts 0" in run_header(snapshot, live=False)
    status = aggregator.status()
    assert status is not None
    assert status.state == "completed"
    assert telemetry.main(["summarize", str(dirs[0]), str(dirs[1])]) == 0
    out = capsys.readouterr().out
    assert "rank 0 on " in out
    assert "rank 1 on " in out
    assert "status: completed" in out


@contextmanager
def long_run(runs: Path, *, until_trained: tuple[int, ...]) -> Iterator[subprocess.Popen[str]]:
    """A 2-rank run far longer than any test, once ``until_trained`` ranks have each finished
    an epoch; killed on the way out if it still runs."""
    launcher = subprocess.Popen(
        [*standalone(), *RUN, "--n-envs", "2", "--episodes", "40", "--telemetry-dir", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def trained() -> bool:
            files = [next(runs.glob(f"*/events.rank{r}.jsonl"), None) for r in until_trained]
            return all(f is not None and '"EPOCH_COMPLETED"' in f.read_text() for f in files)

        wait_until(trained, 120, f"the first epoch of ranks {until_trained}")
        yield launcher
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` under a torchrun launcher (from its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_killing_a_rank_ends_the_run_and_names_the_dead_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    with long_run(runs, until_trained=(1,)) as launcher:
        pid = _rank_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out, _err = launcher.communicate(timeout=120)
        ended_after = time.monotonic() - killed
    assert launcher.returncode != 0
    assert ended_after < 60, ended_after  # torchrun's teardown, no hang
    assert "Telemetry summary of rank 0 of 2" in out
    assert "telemetry complete: every event was kept by every backend" in out
    (run_dir,) = runs.iterdir()
    replay = read_events(run_dir, strict=True)  # rank 1 was killed between flushes or mid-line
    ended = by_type(replay.events, ET.TRAINING_COMPLETED)
    assert [e.rank for e in ended] == [0]
    d = ended[0].data
    assert d["status"] == "failed"
    assert d["lost_ranks"] == [1]
    assert f"rank 1 (pid {pid} " in d["error"]
    reports = {r.rank: r for r in replay.ranks}
    assert reports[0].state == "failed"
    assert reports[1].state == "unfinished"
    assert reports[1].events > 0
    assert replay.status.state == "failed"
    assert "rank 1 died" in replay.status.detail
    assert telemetry.main(["summarize", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"rank 1 died: its events stop at {reports[1].last}" in out
    # Replayed (streamed, not held in memory), the run says the same, ranks and all.
    assert telemetry.main(["replay", str(run_dir), "--telemetry-dir", str(tmp_path / "re")]) == 0
    out = capsys.readouterr().out
    assert f"rank 1 died: its events stop at {reports[1].last}" in out
    again = read_events(tmp_path / "re")
    assert [(r.rank, r.events, r.state) for r in again.ranks] == [
        (r.rank, r.events, r.state) for r in replay.ranks
    ]


def test_a_stopped_rank_is_named_while_the_others_wait_and_fails_the_run_at_the_timeout(
    tmp_path: Path,
) -> None:
    """The bug: a rank stopped with SIGSTOP made the others wait in silence until gloo's
    30-minute timeout. Now the waiting rank names it within a quarter of --collective-timeout,
    and when the timeout comes the run fails naming the stopped rank."""
    runs = tmp_path / "runs"
    launcher = subprocess.Popen(
        [*standalone(), *RUN, "--n-envs", "2", "--episodes", "40", "--collective-timeout", "20",
         "--telemetry-dir", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = None
    try:

        def trained() -> bool:
            files = [next(runs.glob(f"*/events.rank{r}.jsonl"), None) for r in (0, 1)]
            return all(f is not None and '"EPOCH_COMPLETED"' in f.read_text() for f in files)

        wait_until(lambda: trained() or launcher.poll() is not None, 120, "both ranks' epochs")
        pid = _rank_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        _out, err = launcher.communicate(timeout=180)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert re.search(
        rf"rank 0: waiting \d+ s in \w+ \(collective \d+\) for rank 1 \(pid {pid} on \S+, "
        r"node 0, stopped\); every rank waits for the slowest",
        err,
    ), err
    (run_dir,) = runs.iterdir()
    ended = {e.rank: e.data for e in by_type(read_events(run_dir).events, ET.TRAINING_COMPLETED)}
    assert ended[0]["status"] == "failed"
    assert ended[0]["lost_ranks"] == [1]
    assert f"rank 1 (pid {pid} " in ended[0]["error"]
    assert "stopped)" in ended[0]["error"]


def test_an_env_anomaly_escalates_on_the_rank_that_steps_the_env(tmp_path: Path) -> None:
    """Env 0 (rank 0's first) has exploding gradients at epoch 3: its window, and its debug
    events, are rank 0's alone; rank 1 opens windows only for its own envs."""
    proc = run([*standalone(), *RUN, "--episodes", "4", "--inject-fault", "exploding-gradients@3",
                "--escalate-epochs", "2", "--telemetry-dir", str(tmp_path)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = read_events(next(tmp_path.iterdir()), strict=True).events
    changes = by_type(events, ET.TELEMETRY_LEVEL_CHANGED)
    opened = [e for e in changes if e.data["to_level"] == "debug"]
    faulted = [e for e in opened if e.data["reason"] == "GRADIENT_ANOMALY:host:exploding"]
    assert [(e.rank, e.data["env_id"], e.epoch, e.data["until_epoch"]) for e in faulted] == [
        (0, 0, 3, 4)
    ]
    for e in opened:  # every env's window is its rank's: envs 0-1 on rank 0, 2-3 on rank 1
        if e.data["env_id"] is not None:
            assert e.data["env_id"] // 2 == e.rank, e
    debug = [e for e in by_type(events, ET.REWARD_COMPUTED) if e.data["env_id"] == 0]
    assert {e.epoch for e in debug} >= {3, 4}
    assert {e.rank for e in debug} == {0}


def test_ctrl_c_on_the_launcher_interrupts_every_rank_and_blames_none(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with long_run(runs, until_trained=(0, 1)) as launcher:
        launcher.send_signal(signal.SIGINT)  # torchrun passes it on to every rank
        launcher.communicate(timeout=120)
    (run_dir,) = runs.iterdir()
    replay = read_events(run_dir, strict=True)
    ended = {e.rank: e.data for e in by_type(replay.events, ET.TRAINING_COMPLETED)}
    assert {r: d["status"] for r, d in ended.items()} == {0: "interrupted", 1: "interrupted"}
    assert [d["lost_ranks"] for d in ended.values()] == [[], []]
    assert replay.status.state == "interrupted"


def test_when_one_rank_cannot_start_every_rank_stops_before_training(tmp_path: Path) -> None:
    """Rank 1's /metrics port (the base port plus its local rank) is taken: rank 1 names it,
    rank 0 says another rank could not start, both exit 2 at once, and nothing trains."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1] - 1
        proc = run([*standalone(), *RUN, "--episodes", "4", "--metrics-port", str(base),
                    "--telemetry-dir", str(tmp_path)], timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert f"rank 1: cannot serve /metrics on 127.0.0.1:{base + 1}" in proc.stderr
    assert "rank 0: another rank could not start" in proc.stderr
    assert "exitcode  : 2" in proc.stderr
    events = read_events(tmp_path).events
    assert not by_type(events, ET.TRAINING_STARTED)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ppo", "--n-envs", "3"], "argument --n-envs: 3 envs do not divide over 2 ranks"),
        (["heuristic"], "heuristic runs are single-process"),
        (["ppo", "--n-envs", "2", "--device", "cuda:0,cuda:1"], "each rank uses one device"),
        (["ppo", "--n-envs", "2", "--sanctum"], "argument --sanctum: not under torchrun"),
    ],
)
def test_what_a_multi_rank_run_cannot_do_is_a_usage_error_before_it_starts(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_two_rank_run_backfilled_from_its_run_directory(
    two_ranks: TwoRanks, tmp_path: Path
) -> None:
    """Rank labels as the live scrape gives them, the Ranks row answered from the blocks
    alone, and the batch totals counted once for the run (rank 0's)."""
    out = subprocess.run(
        [sys.executable, "-m", "esper.scripts.cli", "telemetry", "backfill",
         str(two_ranks.run_dir), "--out", str(tmp_path / "blocks")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(ranks 0, 1)" in out.stdout
    events = two_ranks.events
    start, end = events[0].timestamp_ns / 1e9, events[-1].timestamp_ns / 1e9 + 1
    with serving_blocks(tmp_path / "prom", tmp_path / "blocks") as base:
        info = query(base, f"esper_run_info @ {end}")
        assert {(s["metric"]["rank"], s["metric"]["local_rank"]) for s in info} == {
            ("0", "0"), ("1", "1")
        }  # fmt: skip
        assert len({s["metric"]["instance"] for s in info}) == 2
        nodes = {e.data["node"] for e in by_type(events, ET.TRAINING_STARTED)}
        assert {s["metric"]["node"] for s in info} == nodes
        live = query(two_ranks.prometheus, "sum(max_over_time(esper_episodes_completed_total[1h]))")
        episodes = query(base, f"sum(max_over_time(esper_episodes_completed_total[1h] @ {end}))")
        assert float(episodes[0]["value"][1]) == float(live[0]["value"][1]) == 8
        rank_panels = _rank_panels([name for name in DASHBOARDS if name != "esper-gpu.json"])
        assert len(rank_panels) >= 4
        for title, expr in rank_panels:
            promql = panel_promql(expr)
            answered = query_range(base, promql, start, end)
            assert answered, (title, promql)
            ranks = {s["metric"].get("rank") for s in answered}
            assert ranks in ({"0", "1"}, {None}), (title, ranks)


def _trace_view(spans: list[Any]) -> list[tuple[Any, ...]]:
    """What a trace store shows of each span, resource aside (a replay is another process)."""
    return sorted(
        (s.trace_id, s.span_id, s.parent_span_id, s.name, s.start_ns, s.end_ns,
         repr(sorted(s.attributes.items())), s.status_code, repr(s.events),
         s.resource.get("esper.rank"), s.resource.get("host.name"))
        for s in spans
    )  # fmt: skip


def test_the_run_replayed_over_otlp_is_the_live_trace(two_ranks: TwoRanks) -> None:
    """Replayed from its run directory into a real OTLP/HTTP receiver, the 2-rank run's
    spans (ids, parents, times, attributes, events) equal those it exported live."""
    receiver = OTLPReceiver()
    try:
        code = telemetry.main(
            ["replay", str(two_ranks.run_dir), "--otlp-endpoint", receiver.endpoint]
        )
        assert code == 0
        replayed = list(receiver.spans)
    finally:
        receiver.close()
    assert len(replayed) == len(two_ranks.spans) > 20
    assert _trace_view(replayed) == _trace_view(two_ranks.spans)
    assert len({s.trace_id for s in replayed}) == 1


def test_rank_0_leaves_a_report_of_every_rank(two_ranks: TwoRanks) -> None:
    """Rank 0 writes the report once this node's other rank has exited: both ranks' records
    are whole in it (a report written earlier would call rank 1 unfinished)."""
    page = two_ranks.run_dir / "report.html"
    assert f"run report: {page}" in two_ranks.proc.stdout
    html = page.read_text()
    assert "data-state='completed'" in html
    assert html.count("<td>completed</td>") == 2, "the ranks table: both ranks completed"
    m = re.search(r'<script id="esper-data" type="application/json">(.*?)</script>', html, re.S)
    assert m is not None
    charts = {c["id"]: c for c in json.loads(m.group(1))["charts"]}
    aggregates = [e for e in two_ranks.events if e.event_type is ET.EPOCH_COMPLETED
                  and e.data["scope"] == "aggregate"]  # fmt: skip
    per_rank = {f"rank {r}": sum(1 for e in aggregates if e.rank == r) for r in (0, 1)}
    assert {s["label"]: len(s["y"]) for s in charts["rank_epoch_seconds"]["series"]} == per_rank
    assert [s["label"] for s in charts["straggler"]["series"]] == ["slowest rank", "median"]
    assert {s["label"] for s in charts["collective_wait"]["series"]} == {"rank 0", "rank 1"}
    # Progress on every rank (only rank 0 writes BATCH_EPOCH_COMPLETED): each env's epochs
    # reach the run's last batch, and every seed ends within the episode it lived in.
    batches = sum(1 for e in two_ranks.events if e.event_type is ET.BATCH_EPOCH_COMPLETED)
    envs = charts["val_accuracy"]["series"]
    assert {s["label"] for s in envs} == {"env 0", "env 1", "env 2", "env 3"}
    assert all(max(s["p"]) == pytest.approx(batches) for s in envs)
    seeds = json.loads(m.group(1))["seeds"]
    assert seeds
    for seed in seeds:
        first, last = seed["stages"][0][3], seed["stages"][-1][4]
        assert int(first) == int(last - 1e-9), f"{seed['id']} outlived its episode"
