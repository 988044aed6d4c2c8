"""The metrics path at scale, on loopback: N simulated ranks scraped by two node agents that
remote-write into one receiving Prometheus with the shipped rules (docs/SCALING.md).

Each rank is a real ``PrometheusOutput`` serving ``/metrics``, fed in a loop by the events of a
recorded 4-env PPO run (its env ids moved to the rank's own), one epoch of events a second.
Ranks live in ``WORKERS`` processes; half register with agent A, half with agent B (started by
the shipped entrypoint from the shipped agent.yml, scraping every ``SCRAPE``). The receiver
(``--web.enable-remote-write-receiver``, the shipped alert and recording rules, evaluated every
``SCRAPE``) also scrapes itself and the agents. After a warm-up, over ``WINDOW`` seconds:
scrape duration p50/p99 (the agents' ``scrape_duration_seconds``), samples ingested per second
and head series at the receiver, its resident memory, the rule groups' evaluation time, and the
CPU the ranks spent rendering ``/metrics`` per scrape (thread CPU time around the render).

A second table runs ``DETAIL_RANKS`` ranks of ``BIG_ENVS`` envs (a recorded 64-env run) at
each ``--metrics-detail``: every env's series, and the envs folded over the rank.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "prometheus"
RANKS = tuple(int(n) for n in os.environ.get("ESPER_SCALE_RANKS", "8,32,64").split(","))
WORKERS = 4
ENVS_PER_RANK = 4
BIG_ENVS = 64
DETAIL_RANKS = int(os.environ.get("ESPER_SCALE_DETAIL_RANKS", "8"))
SCRAPE = "2s"
WARMUP = float(os.environ.get("ESPER_SCALE_WARMUP", "20"))
WINDOW = float(os.environ.get("ESPER_SCALE_WINDOW", "60"))


T = '{{job="esper-trainer"}}'
S = '{{job="store"}}'
QUERIES = {
    "series_per_rank": f"avg(scrape_samples_scraped{T}{{at}})",
    "scrape_p50_ms": "quantile(0.5, quantile_over_time(0.5, "
                     f"scrape_duration_seconds{T}[{{w}}]{{at}}))",
    "scrape_p99_ms": "quantile(0.99, quantile_over_time(0.99, "
                     f"scrape_duration_seconds{T}[{{w}}]{{at}}))",
    "ingest_per_s": f"rate(prometheus_tsdb_head_samples_appended_total{S}[{{w}}]{{at}})",
    "head_series": f"prometheus_tsdb_head_series{S}{{at}}",
    "rss_mib": f"process_resident_memory_bytes{S}{{at}}",
    "rules_ms": "sum(avg_over_time("
                f"prometheus_rule_group_last_duration_seconds{S}[{{w}}]{{at}}))",
}  # fmt: skip
"""What is read from the receiver at the end of the window ({w}: the window, {at}: its end)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback
        return list(json.loads(r.read())["data"]["result"])


def _value(base: str, promql: str) -> float:
    result = _get(base, promql)
    return float(result[0]["value"][1]) if result else float("nan")


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("timed out waiting for the metrics path to come up")


def _record(tmp: Path, envs: int) -> Path:
    out = tmp / f"record-{envs}"
    subprocess.run(
        [sys.executable, "-m", "esper.scripts.cli", "train", "ppo", "--n-envs",
         str(envs), "--episodes", str(envs), "--max-epochs", "5",
         "--seed", "9", "--telemetry-dir", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class _Load:
    """What each rank serves: a record's events, for ``envs`` envs, at ``detail``."""

    record: str
    envs: int
    detail: str


def _worker(ranks: list[int], load: _Load, targets: list[str], stop: Any, out: Any) -> None:
    """Serve ``ranks`` (each a real exporter, fed ``load`` in a loop) until ``stop`` is set;
    put (render CPU seconds, renders) on ``out``."""
    record, envs, detail = load.record, load.envs, load.detail
    os.environ["OMP_NUM_THREADS"] = "1"
    from esper.leyline import TelemetryEventType
    from esper.nissa import read_events
    from esper.nissa.prometheus import PrometheusOutput
    from esper.nissa.prometheus.catalogue import MetricDetail

    events = read_events(record).events
    epochs: list[list[Any]] = [[]]
    for e in events:
        epochs[-1].append(e)
        if e.event_type is TelemetryEventType.BATCH_EPOCH_COMPLETED or (
            e.event_type is TelemetryEventType.EPOCH_COMPLETED
            and e.data.get("scope") == "aggregate"
        ):
            epochs.append([])
    cpu = [0.0]
    renders = [0]
    lock = threading.Lock()
    outputs = []
    for rank in ranks:
        prom = PrometheusOutput(cuda=False, multi_rank=True, detail=MetricDetail(detail))
        render = prom.render

        def timed(render: Any = render) -> bytes:
            t0 = time.thread_time()
            body: bytes = render()
            with lock:
                cpu[0] += time.thread_time() - t0
                renders[0] += 1
            return body

        prom.render = timed  # type: ignore[method-assign]
        prom.serve(0)
        prom.write_sd_file(targets[rank % 2], host="127.0.0.1",
                           labels={"run_id": "scale", "mode": "ppo", "task": "digits",
                                   "rank": str(rank), "local_rank": str(rank % 8),
                                   "node": f"node-{rank % 2}"})  # fmt: skip
        outputs.append((rank, prom))

    def feed(rank: int, prom: Any) -> None:
        offset = rank * envs
        i = 0
        while not stop.is_set():
            for e in epochs[i % len(epochs)]:
                data = dict(e.data)
                if "env_id" in data and isinstance(data["env_id"], int):
                    data["env_id"] += offset
                prom.emit(replace(e, data=data, timestamp_ns=time.time_ns()))
            i += 1
            stop.wait(1.0)

    threads = [threading.Thread(target=feed, args=o, daemon=True) for o in outputs]
    for t in threads:
        t.start()
    stop.wait()
    for _, prom in outputs:
        prom.close()
    out.put((cpu[0], renders[0]))


def _prometheus(args: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    with log.open("w") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def _agent(work: Path, i: int, *, port: int, store: str, binary: str, procs: list[Any]) -> str:
    """Start node agent ``i`` from the shipped entrypoint and agent.yml; its targets folder."""
    t = work / f"targets-{i}"
    t.mkdir()
    config = (DEPLOY / "agent.yml").read_text()
    config = (config.replace("/etc/prometheus/targets", str(t))
              .replace("localhost:9090", f"127.0.0.1:{port}")
              .replace("scrape_interval: 5s", f"scrape_interval: {SCRAPE}")
              .replace("refresh_interval: 30s", "refresh_interval: 1s"))  # fmt: skip
    (work / f"agent-{i}.yml").write_text(config)
    env = {**os.environ, "ESPER_REMOTE_WRITE_URL": f"{store}/api/v1/write",
           "ESPER_NODE": f"node-{i}", "ESPER_AGENT_CONFIG": str(work / f"agent-{i}.yml"),
           "ESPER_AGENT_DATA": str(work / f"agent-{i}-data"), "PROMETHEUS": binary,
           "TMPDIR": str(work)}  # fmt: skip
    procs.append(_prometheus(["sh", str(DEPLOY / "agent-entrypoint.sh"),
                              f"--web.listen-address=127.0.0.1:{port}"],
                             work / f"agent-{i}.log", env))  # fmt: skip
    return str(t)


def _run(
    n: int, tmp: Path, record: Path, envs: int = ENVS_PER_RANK, detail: str = "env"
) -> dict[str, float]:
    work = tmp / f"n{n}-{envs}-{detail}"
    work.mkdir()
    binary = str(shutil.which("prometheus"))
    store_port = _free_port()
    store = f"http://127.0.0.1:{store_port}"
    agent_ports = [_free_port(), _free_port()]
    scrape_store = [f"127.0.0.1:{store_port}", *(f"127.0.0.1:{p}" for p in agent_ports)]
    (work / "receiver.yml").write_text(json.dumps({
        "global": {"evaluation_interval": SCRAPE, "scrape_interval": SCRAPE},
        "rule_files": [str(DEPLOY / "alerts.yml"), str(DEPLOY / "recording.yml")],
        "scrape_configs": [
            {"job_name": "store", "static_configs": [{"targets": scrape_store[:1]}]}
        ],
    }))  # fmt: skip
    receiver = [binary, f"--config.file={work / 'receiver.yml'}",
                f"--storage.tsdb.path={work / 'receiver'}",
                f"--web.listen-address=127.0.0.1:{store_port}",
                "--web.enable-remote-write-receiver"]  # fmt: skip
    procs = [_prometheus(receiver, work / "receiver.log")]
    targets = [
        _agent(work, i, port=port, store=store, binary=binary, procs=procs)
        for i, port in enumerate(agent_ports)
    ]
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=([r for r in range(n) if r % WORKERS == w],
                                          _Load(str(record), envs, detail), targets, stop,
                                          results))
        for w in range(WORKERS)
    ]  # fmt: skip
    try:
        for w in workers:
            w.start()
        _wait(lambda: _value(store, 'count(up{job="esper-trainer"} == 1)') == n, 120)
        time.sleep(WARMUP)  # the measurement's own warm-up, not a wait for anything
        t0 = time.time()
        time.sleep(WINDOW)  # the window measured
        w = f"{int(WINDOW)}s"
        at = f" @ {time.time():.3f}"
        q = {name: promql.format(w=w, at=at) for name, promql in QUERIES.items()}
        figures: dict[str, float] = {"ranks": n}
        for name, promql in q.items():
            figures[name] = _value(store, promql)
        for name in ("scrape_p50_ms", "scrape_p99_ms", "rules_ms"):
            figures[name] *= 1000
        figures["rss_mib"] /= 2**20
        figures["window"] = time.time() - t0
    finally:
        stop.set()
        cpu = renders = 0.0
        for _ in workers:
            c, r = results.get(timeout=60)
            cpu, renders = cpu + c, renders + r
        for w_ in workers:
            w_.join(timeout=30)
        for p in reversed(procs):  # the agents before the store they flush to
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    figures["render_cpu_ms"] = 1000 * cpu / max(renders, 1)
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="esper-bench-scale-") as name:
        tmp = Path(name)
        record = _record(tmp, ENVS_PER_RANK)
        rows = [_run(n, tmp, record) for n in RANKS]
        big = _record(tmp, BIG_ENVS)
        detail_rows = {d: _run(DETAIL_RANKS, tmp, big, BIG_ENVS, d) for d in ("env", "rank")}
    table = [
        "| ranks | lines per rank | scrape p50 / p99 | ranks' render CPU per scrape | samples "
        "ingested per s | head series | receiver RSS | rule evaluation per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table.extend(
        f"| {r['ranks']:.0f} | {r['series_per_rank']:,.0f} | {r['scrape_p50_ms']:.1f} / "
        f"{r['scrape_p99_ms']:.1f} ms | {r['render_cpu_ms']:.2f} ms | "
        f"{r['ingest_per_s']:,.0f} | {r['head_series']:,.0f} | {r['rss_mib']:.0f} MiB | "
        f"{r['rules_ms']:.1f} ms |"
        for r in rows
    )
    detail_table = [
        "| detail | lines per rank | scrape p50 / p99 | ranks' render CPU per scrape | samples "
        "ingested per s | head series | receiver RSS | rule evaluation per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    detail_table.extend(
        f"| `{d}` | {r['series_per_rank']:,.0f} | {r['scrape_p50_ms']:.1f} / "
        f"{r['scrape_p99_ms']:.1f} ms | {r['render_cpu_ms']:.2f} ms | "
        f"{r['ingest_per_s']:,.0f} | {r['head_series']:,.0f} | {r['rss_mib']:.0f} MiB | "
        f"{r['rules_ms']:.1f} ms |"
        for d, r in detail_rows.items()
    )
    per_series_rss = statistics.median(
        r["rss_mib"] * 2**20 / r["head_series"] for r in rows if r["head_series"]
    )
    body = "\n".join([
        "## The metrics path at scale (loopback)",
        "",
        f"`bench/bench_scale.py`: N ranks ({ENVS_PER_RANK} envs each, real exporters fed a "
        f"recorded run's events, one epoch a second) in {WORKERS} processes; two node agents "
        f"(agent mode, the shipped agent.yml) scrape them every {SCRAPE} and remote-write into "
        "one receiving Prometheus 2.42 with the shipped alert and recording rules. Figures over "
        f"a {WINDOW:.0f} s window after a {WARMUP:.0f} s warm-up.",
        "",
        *table,
        "",
        f"Receiver memory per head series: about {per_series_rss / 1024:.1f} KiB (median over "
        "the rows). docs/SCALING.md extrapolates these figures.",
        "",
        f"{DETAIL_RANKS} ranks of {BIG_ENVS} envs (a recorded {BIG_ENVS}-env run), the same "
        "topology, at each `--metrics-detail`: every env's series, and the envs folded over "
        "the rank.",
        "",
        *detail_table,
    ])  # fmt: skip
    print(body)
    write_section("scale", body)


if __name__ == "__main__":
    main()
