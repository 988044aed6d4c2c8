"""Real Prometheus and Alertmanager servers on loopback for tests, and a webhook receiver.

Servers get a temporary config and data directory and a free port; readiness is polled with a
deadline (never a fixed sleep); everything is stopped on exit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def _ready(url: str) -> bool:
    try:
        http_get(url, timeout=1.0)
    except OSError:
        return False
    return True


@dataclass
class Stack:
    """A Prometheus (base URL) that scraped a training run, and the webhook its alerts reach."""

    prometheus: str
    webhook: Webhook
    train: subprocess.CompletedProcess[str]
    started: float
    finished: float
    run_dir: Path
    """The run's telemetry directory (events.jsonl)."""


class JsonReceiver:
    """An HTTP endpoint on loopback that records the JSON body of every POST it is sent."""

    path = "/"

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._cond:
                    outer.bodies.append(json.loads(body))
                    outer._cond.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{self.path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(
        self, pick: Callable[[], dict[str, Any] | None], timeout: float, failure: Callable[[], str]
    ) -> dict[str, Any]:
        """What ``pick`` finds in the bodies received; fails with ``failure()`` after
        ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: pick() is not None, timeout):
                raise AssertionError(failure())
            found = pick()
            assert found is not None
            return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Webhook(JsonReceiver):
    """An Alertmanager webhook receiver on loopback that records every alert it is sent."""

    path = "/alerts"

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [a for body in self.bodies for a in body.get("alerts", [])]

    def wait_for(self, alertname: str, timeout: float) -> dict[str, Any]:
        """The first alert received with this name; fails after ``timeout`` seconds."""

        def found() -> dict[str, Any] | None:
            return next((a for a in self.alerts if a["labels"]["alertname"] == alertname), None)

        def failure() -> str:
            names = sorted({a["labels"]["alertname"] for a in self.alerts})
            return f"{alertname} not delivered in {timeout} s (got {names})"

        return self.first(found, timeout, failure)


@contextmanager
def _process(cmd: list[str], log: Path, ready_url: str, what: str) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until(lambda: proc.poll() is None and _ready(ready_url), 60, f"{what} ready")
        except AssertionError:
            raise AssertionError(f"{what} did not start:\n{log.read_text()[-3000:]}") from None
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def alertmanager(tmp: Path, webhook_url: str) -> Iterator[int]:
    """A real Alertmanager sending every alert at once to ``webhook_url``."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is not installed (Debian package prometheus-alertmanager)"
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook_url,
                                                            "send_resolved": False}]}],
    }  # fmt: skip
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [
        binary, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ]  # fmt: skip
    with _process(
        cmd, tmp / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready", "Alertmanager"
    ):
        yield port


def _shipped_trainer_job() -> dict[str, Any]:
    """The esper-trainer scrape job of deploy/prometheus/prometheus.yml, as shipped."""
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "esper-trainer"]
    return dict(job)


@contextmanager
def prometheus(
    tmp: Path, *, sd_dir: Path, alertmanager_port: int | None = None, interval: str = "1s"
) -> Iterator[str]:
    """A real Prometheus (scrape and evaluation every ``interval``) discovering trainers
    through ``sd_dir``, loaded with the repository's alert and recording rules. Yields its
    base URL."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed (Debian package prometheus)"
    tmp.mkdir(parents=True, exist_ok=True)
    sd_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml"),
                       str(DEPLOY / "prometheus" / "recording.yml")],
        "scrape_configs": [{
            **_shipped_trainer_job(), "scrape_interval": interval,
            "file_sd_configs": [{"files": [str(sd_dir / "*.json")], "refresh_interval": "1s"}],
        }],
    }  # fmt: skip
    if alertmanager_port is not None:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with _prometheus_in(tmp, binary, "--rules.alert.resend-delay=1s") as base:
        yield base


@contextmanager
def serving_blocks(tmp: Path, blocks: Path) -> Iterator[str]:
    """A real Prometheus that scrapes nothing and serves only the TSDB blocks in ``blocks``
    (copied, so nothing it writes touches them). Yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed (Debian package prometheus)"
    shutil.copytree(blocks, tmp / "data")
    (tmp / "prometheus.yml").write_text("global: {}\n")
    with _prometheus_in(tmp, binary, "--storage.tsdb.retention.time=36500d") as base:
        yield base


@contextmanager
def _prometheus_in(tmp: Path, binary: str, *flags: str) -> Iterator[str]:
    """Prometheus with ``tmp``'s prometheus.yml and data folder on a free loopback port, until
    it is ready; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", *flags,
    ]  # fmt: skip
    with _process(cmd, tmp / "prometheus.log", f"{base}/-/ready", "Prometheus"):
        yield base


def panel_promql(expr: str, run: str | None = None) -> str:
    """A dashboard panel's query as Grafana would send it: ``$__rate_interval`` at 30 s, every
    template variable matching everything (``$run``: ``run``, when given)."""
    promql = expr.replace("$__rate_interval", "30s")
    for variable in ("instance", "env", "rank"):
        promql = promql.replace(f'"${variable}"', '".*"')
    return promql.replace('"$run"', f'"{run}"' if run is not None else '".*"')


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def query_range(base: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    """A range query's result matrix (1 s steps)."""
    params = {"query": promql, "start": start, "end": end, "step": "1"}
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(params)
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def metric_names(base: str) -> set[str]:
    return set(json.loads(http_get(f"{base}/api/v1/label/__name__/values"))["data"])
