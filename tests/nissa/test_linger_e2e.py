"""--metrics-linger against a real Prometheus while another client polls ``/metrics``.

Before, any GET counted as the final scrape: a person's curl loop or a health probe answered the
linger, the run exited, and Prometheus (scraping every few seconds) kept a stale state. Now the
run waits for the Prometheus that scraped it, and says so in its summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from esper.nissa import read_events
from tests._stack import prometheus, query, wait_until

pytestmark = pytest.mark.slow


def _poll(url_of: list[str], stop: threading.Event, hits: list[int]) -> None:
    """A foreign client: GET /metrics every 0.2 s until ``stop`` (bounded: 10 minutes)."""
    for _ in range(3000):
        if stop.wait(0.2):
            return
        if not url_of:
            continue
        try:
            with urllib.request.urlopen(url_of[0], timeout=2) as resp:  # noqa: S310 - loopback
                resp.read()
            hits.append(1)
        except OSError:
            pass  # the run is gone


def test_prometheus_holds_the_final_state_while_a_client_polls_every_200_ms(
    tmp_path: Path,
) -> None:
    sd = tmp_path / "targets"
    with prometheus(tmp_path / "prom", sd_dir=sd, interval="3s") as base:
        job = subprocess.Popen(
            [sys.executable, "-m", "esper.scripts.train", "ppo", "--n-envs", "2",
             "--episodes", "4", "--max-epochs", "4", "--seed", "5",
             "--metrics-port", "0", "--metrics-sd-dir", str(sd), "--metrics-linger", "60",
             "--telemetry-dir", str(tmp_path / "runs")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url_of: list[str] = []
        stop, hits = threading.Event(), []  # type: ignore[var-annotated]
        poller = threading.Thread(target=_poll, args=(url_of, stop, hits))
        poller.start()
        try:
            wait_until(lambda: any(sd.glob("*.json")) or job.poll() is not None, 120,
                       "the run's scrape target")  # fmt: skip
            (target,) = json.loads(next(sd.glob("*.json")).read_text())[0]["targets"]
            url_of.append(f"http://{target}/metrics")
            out, err = job.communicate(timeout=600)
        finally:
            stop.set()
            poller.join(30)
            job.kill()
        # Read before this Prometheus stops: what it holds of the run, at the end.
        final = query(base, "last_over_time(esper_episodes_completed_total[10m])")
    assert job.returncode == 0, err
    assert len(hits) > 10  # the client really polled while the run lived
    assert "final state read by every Prometheus that scraped: 127.0.0.1 (Prometheus/" in out
    recorded = [e for e in read_events(next((tmp_path / "runs").iterdir())).events
                if e.event_type.name == "TRAINING_COMPLETED"]  # fmt: skip
    (completed,) = recorded
    assert completed.data["episodes_completed"] == 4
    assert [float(r["value"][1]) for r in final] == [4.0]
