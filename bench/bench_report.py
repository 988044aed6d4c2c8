"""The run report on the path users take: ``esper report RUN -o FILE`` on a record of over
100,000 events, against ``esper telemetry summarize RUN`` on the same record (the peer: the
other command that reads a whole record and tells what it holds); then the page's render in
Debian's headless Chromium, offline.

The record: a real PPO run at --telemetry-level debug (4 envs), whose training batches are then
repeated as later batches (timestamps moved on by the run's length, batch and episode counts
advanced, seed and event ids made new) until the record holds ``EVENTS`` events: one long run
in a real run's proportions. Each command runs as a new process, ``ROUNDS`` times interleaved;
medians are reported.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._browser

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import DirectoryOutput, read_events

from _report import esper, write_section

EVENTS = 100_000
ROUNDS = 3
RUN = ["ppo", "--n-envs", "4", "--episodes", "8", "--max-epochs", "10", "--seed", "2",
       "--telemetry-level", "debug", "--inject-fault", "exploding-gradients@3",
       "--inject-fault", "nan-loss@7"]  # fmt: skip
"""Faults, so that the record has something to mark: anomalies, rollbacks, escalations."""
ET = TelemetryEventType
BATCH_FIELDS = ("batch_idx", "batch")
EPISODE_FIELDS = ("episodes_completed", "start_episode")


def _later(e: TelemetryEvent, k: int, span_ns: int, batches: int, episodes: int) -> TelemetryEvent:
    """Event ``e`` of the k-th repeat: as if the run had gone on that many runs' time."""
    data: dict[str, Any] = dict(e.data)
    for f in BATCH_FIELDS:
        if isinstance(data.get(f), int):
            data[f] += k * batches
    for f in EPISODE_FIELDS:
        if isinstance(data.get(f), int):
            data[f] += k * episodes
    seed_id = e.seed_id
    if seed_id:
        seed_id = f"{seed_id}-r{k}"
    if isinstance(data.get("seed_id"), str):
        data["seed_id"] = f"{data['seed_id']}-r{k}"
    if isinstance(data.get("trigger_event_id"), str):
        data["trigger_event_id"] = f"{data['trigger_event_id']}-r{k}"
    return replace(e, timestamp_ns=e.timestamp_ns + k * span_ns, data=data, seed_id=seed_id,
                   event_id=f"{e.event_id}-r{k}")  # fmt: skip


def _record(tmp: Path) -> tuple[Path, int]:
    """A record of at least EVENTS events, from one real run (see the module docstring)."""
    esper("train", *RUN, "--telemetry-dir", str(tmp / "seed-run"), "--no-report")
    events = read_events(tmp / "seed-run").events
    first = next(i for i, e in enumerate(events) if e.event_type is ET.TRAINING_STARTED) + 1
    last = max(i for i, e in enumerate(events) if e.event_type is ET.TRAINING_COMPLETED)
    body = events[first:last]
    batches = sum(1 for e in body if e.event_type is ET.BATCH_EPOCH_COMPLETED)
    episodes = int(events[last].data["episodes_completed"])
    span = events[last].timestamp_ns - events[first].timestamp_ns + 1_000_000
    repeats = -(-(EVENTS - 2) // len(body))
    started = events[first - 1]
    out = DirectoryOutput(tmp / "record")
    out.emit(replace(started, data={**started.data, "n_episodes": episodes * repeats}))
    for k in range(repeats):
        for e in body:
            out.emit(_later(e, k, span, batches, episodes))
    end = _later(events[last], repeats - 1, span, batches, episodes)
    out.emit(replace(end, event_id=events[last].event_id))
    out.close()
    return out.output_dir, 2 + repeats * len(body)


def _render(page: Path) -> tuple[float, float, int]:
    """(ms from navigation to the page's script done, ms the script took, console errors)."""
    from tests import _browser

    with _browser.offline_chromium() as driver:
        drawn = _browser.open_report(driver, page, timeout=60)
        nav = drawn["readyMs"]  # since navigation started, when the page was drawn
        errors = len(_browser.console_errors(driver)) + len(drawn["errors"])
    return float(nav), float(drawn["renderMs"]), errors


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="esper-bench-report-") as name:
        tmp = Path(name)
        record, n = _record(tmp)
        jsonl = (record / "events.jsonl").stat().st_size
        page = tmp / "report.html"
        report: list[float] = []
        summarize: list[float] = []
        for r in range(ROUNDS):
            for which in ("report", "summarize") if r % 2 == 0 else ("summarize", "report"):
                if which == "report":
                    report.append(esper("report", str(record), "-o", str(page)))
                else:
                    summarize.append(esper("telemetry", "summarize", str(record)))
        size = page.stat().st_size
        renders = [_render(page) for _ in range(ROUNDS)]
    rep, peer = statistics.median(report), statistics.median(summarize)
    nav = statistics.median(r[0] for r in renders)
    script = statistics.median(r[1] for r in renders)
    errors = max(r[2] for r in renders)
    body = "\n".join([
        "## The run report",
        "",
        f"`bench/bench_report.py`: a record of {n:,} events ({jsonl / 2**20:.1f} MiB of JSONL; a "
        f"real debug-level PPO run, {' '.join(RUN[1:5])} with {' and '.join(RUN[-3::2])}, its "
        f"batches repeated as later batches), each command run as a new process, {ROUNDS} "
        "interleaved rounds.",
        "",
        "| command | median wall time (s) | events per second | all rounds (s) |",
        "|---|---|---|---|",
        f"| `esper report RUN -o FILE` | {rep:.2f} | {n / rep:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in report)} |",
        f"| peer: `esper telemetry summarize RUN` | {peer:.2f} | {n / peer:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in summarize)} |",
        "",
        f"The report takes {rep / peer:.2f}x the summary's time (budget: 10 s) and is "
        f"{size / 1e6:.2f} MB (goal: at most 5 MB; uPlot is 51 KB of it), "
        f"{size / jsonl * 100:.0f}% of the JSONL. Curves over {2000:,} points are thinned for "
        "drawing to each bucket's min and max; the tables and markers use every point.",
        "",
        f"Headless Chromium (offline, 1400x1000): the page is drawn {nav:.0f} ms after "
        f"navigation starts (median of {ROUNDS}; budget: 3 s), {script:.0f} ms of it in the "
        f"report's script; console errors: {errors}.",
    ])  # fmt: skip
    print(body)
    write_section("report", body)


if __name__ == "__main__":
    main()
