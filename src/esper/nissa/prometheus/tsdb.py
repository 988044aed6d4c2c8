"""Recorded runs into Prometheus TSDB blocks, and the rules evaluated over them afterwards.

Real tools do the work: ``promtool tsdb create-blocks-from openmetrics`` writes the blocks,
a scratch ``prometheus`` (loopback, a free port, its own copy of the blocks, the shipped rule
files) serves them, ``promtool tsdb create-blocks-from rules`` backfills the recording rules
from it, and the alert rules are read from that Prometheus's rules API and evaluated with range
queries: an alert fires at the first evaluation at which its expression has held for the
rule's ``for``, as the rule manager would have decided live.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.leyline import UsageError
from esper.nissa.prometheus.exposition import label_text

DEBIAN_PACKAGE = "prometheus"
"""The Debian package that installs ``prometheus`` and ``promtool``."""

READY_SECONDS = 60.0
"""How long a scratch Prometheus may take to load the blocks and answer."""

MAX_STEPS = 10_000
"""Evaluations per range: Prometheus answers at most 11,000 points per series."""


class ToolError(RuntimeError):
    """A Prometheus tool failed; the message names the command and quotes its error."""


def tool(name: str) -> str:
    """The path of ``name`` on PATH; a UsageError naming the Debian package when absent."""
    path = shutil.which(name)
    if path is None:
        raise UsageError(
            f"{name} is not on PATH: install the Debian package {DEBIAN_PACKAGE} "
            f"(apt-get install {DEBIAN_PACKAGE}) or put Prometheus's {name} on PATH"
        )
    return path


def step_seconds(start: float, end: float) -> float:
    """The evaluation step over [start, end]: every second, coarser past ``MAX_STEPS``."""
    return float(max(1, math.ceil((end - start) / MAX_STEPS)))


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ToolError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): " + " / ".join(detail))
    return proc.stdout


def create_blocks(openmetrics: Path, out: Path) -> None:
    """TSDB blocks in ``out`` from a timestamped OpenMetrics file."""
    _run([tool("promtool"), "tsdb", "create-blocks-from", "openmetrics", "-q",
          str(openmetrics), str(out)])  # fmt: skip


def blocks(directory: Path) -> list[Path]:
    """The TSDB blocks in ``directory`` (each a folder with a meta.json)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if (p / "meta.json").is_file())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScratchPrometheus:
    """A Prometheus on loopback serving a copy of some blocks, with rule files loaded (see
    ``scratch_prometheus``)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - loopback
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise ToolError(f"Prometheus {path}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
        )
        return list(data["result"])

    def alerting_rules(self) -> list[dict[str, Any]]:
        """The alerting rules Prometheus loaded (name, query, duration in seconds, labels)."""
        groups = self._get("/api/v1/rules", {"type": "alert"})["groups"]
        return [r for g in groups for r in g["rules"] if r["type"] == "alerting"]

    def recording_rules(self) -> list[dict[str, Any]]:
        """The recording rules Prometheus loaded (name, query, labels)."""
        groups = self._get("/api/v1/rules", {"type": "record"})["groups"]
        return [r for g in groups for r in g["rules"] if r["type"] == "recording"]


@contextmanager
def scratch_prometheus(block_dir: Path, rule_files: list[Path]) -> Iterator[ScratchPrometheus]:
    """Start a Prometheus serving a copy of ``block_dir``'s blocks (so nothing it writes, and
    no compaction, touches them) with ``rule_files`` loaded; stop it and remove the copy."""
    binary = tool("prometheus")
    with tempfile.TemporaryDirectory(prefix="esper-backfill-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir()
        for block in blocks(block_dir):
            shutil.copytree(block, data / block.name)
        # An evaluation interval longer than any run: Prometheus's own evaluations (at "now",
        # over no data) add nothing; every rule is evaluated over the past by range queries.
        config = {
            "global": {"evaluation_interval": "24h"},
            "rule_files": [str(p.resolve()) for p in rule_files],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log_path = tmp / "prometheus.log"
        port = _free_port()
        cmd = [
            binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=36500d",  # never delete an old recorded run
        ]  # fmt: skip
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, base, log_path)
            yield ScratchPrometheus(base)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " / ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise ToolError(f"prometheus exited ({proc.returncode}) before it was ready: {tail}")
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # polling a server we started for readiness, bounded by the deadline
    raise ToolError(f"prometheus did not become ready within {READY_SECONDS:.0f} s ({base})")


def backfill_recording_rules(
    prom: ScratchPrometheus, rule_file: Path, out: Path, start: float, end: float
) -> None:
    """Blocks in ``out`` for ``rule_file``'s recording rules over [start, end], evaluated by
    ``promtool tsdb create-blocks-from rules`` against ``prom``; then, past ``end``, the rules
    a live Prometheus goes on answering after the run's last sample (see ``tail_rules``), for
    as long as their windows hold samples: a run shorter than a rule's window draws its
    quantiles and rates from the blocks as it did live."""
    step = step_seconds(start, end)
    _run([
        tool("promtool"), "tsdb", "create-blocks-from", "rules", "-q",
        f"--url={prom.base}", f"--start={math.floor(start)}", f"--end={math.ceil(end)}",
        f"--eval-interval={step:g}s", f"--output-dir={out}", str(rule_file),
    ])  # fmt: skip
    rules, window = tail_rules(prom.recording_rules())
    if not rules:
        return
    with tempfile.TemporaryDirectory(prefix="esper-backfill-") as tmp:
        tail_file = Path(tmp) / "tail.yml"
        groups = {"groups": [{"name": "esper-tail", "rules": [
            {"record": r["name"], "expr": r["query"], **({"labels": r["labels"]}
                                                          if r.get("labels") else {})}
            for r in rules]}]}  # fmt: skip
        tail_file.write_text(json.dumps(groups))  # JSON is YAML
        first = math.ceil(end) + math.ceil(step)
        _run([
            tool("promtool"), "tsdb", "create-blocks-from", "rules", "-q",
            f"--url={prom.base}", f"--start={first}", f"--end={math.ceil(end + window)}",
            f"--eval-interval={step:g}s", f"--output-dir={out}", str(tail_file),
        ])  # fmt: skip


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\[[^\]]*\])?")
_FUNCTIONS_AND_WORDS = frozenset({
    "sum", "avg", "min", "max", "count", "quantile", "stddev", "stdvar", "topk", "bottomk",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "by",
    "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
})  # fmt: skip


def tail_rules(rules: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """The recording rules whose every series selector reads a range (``x[5m]``), and the
    longest such range in seconds. A live Prometheus goes on answering these after a run's
    last sample, until the window passes it; a rule that reads a series at an instant (a
    gauge) answers nothing once the target is gone (its series are stale), so it has no tail,
    and the blocks, which hold no staleness markers, must not invent one."""
    tail, longest = [], 0.0
    for rule in rules:
        expr = re.sub(r'"[^"]*"', '""', str(rule["query"]))  # label values are not names
        expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # nor label lists
        windows, instant = [], False
        for name, _labels, window in _SELECTOR.findall(expr):
            if name in _FUNCTIONS_AND_WORDS or re.fullmatch(r"[0-9.e]+", name):
                continue
            if window:
                windows.append(prometheus_seconds(window.strip("[]")))
            else:
                instant = True
        if windows and not instant:
            tail.append(rule)
            longest = max(longest, *windows)
    return tail, longest


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def prometheus_seconds(text: str) -> float:
    """Seconds of a Prometheus duration (``5m``, ``1h30m``)."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


@dataclass(slots=True)
class AlertActivity:
    """One alert (rule and series) over the past: when it fired, and its ``ALERTS`` samples."""

    name: str
    labels: dict[str, str]
    """The alert's labels: the expression's series and the rule's own (severity)."""
    fired_at: list[float]
    """Unix seconds of each evaluation at which it started firing (again, after a gap)."""
    states: list[tuple[float, str]]
    """(evaluation time, ``pending`` or ``firing``) at every evaluation it was active."""


def evaluate_alerts(prom: ScratchPrometheus, start: float, end: float) -> list[AlertActivity]:
    """Every alert the loaded alerting rules raise over [start, end], evaluated at every step
    (``step_seconds``) as the rule manager evaluates live: pending while the expression returns
    the series, firing once it has for the rule's ``for``; a gap resolves it and restarts the
    clock. In the order they first became active."""
    step = step_seconds(start, end)
    found = []
    for rule in prom.alerting_rules():
        hold = float(rule.get("duration", 0))
        for series in prom.query_range(rule["query"], start, end, step):
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
            labels.update(rule.get("labels") or {})
            activity = AlertActivity(rule["name"], labels, [], [])
            since: float | None = None
            previous: float | None = None
            for t_text, _value in series["values"]:
                t = float(t_text)
                if since is None or previous is None or t - previous > step * 1.5:
                    since = t  # a gap: resolved, and the for clock restarts
                previous = t
                firing = t - since >= hold
                if firing and (not activity.states or activity.states[-1][1] != "firing"
                               or t - activity.states[-1][0] > step * 1.5):  # fmt: skip
                    activity.fired_at.append(t)
                activity.states.append((t, "firing" if firing else "pending"))
            found.append(activity)
    return sorted(found, key=lambda a: (a.states[0][0], a.name))


def write_alerts_openmetrics(activities: list[AlertActivity], out: Path) -> int:
    """The ``ALERTS`` series Prometheus would have written (1 at every evaluation an alert was
    pending or firing), as timestamped OpenMetrics; returns the samples written."""
    n = 0
    with out.open("w", encoding="utf-8") as fh:
        fh.write("# TYPE ALERTS gauge\n")
        for a in activities:
            for state in ("pending", "firing"):
                points = [t for t, s in a.states if s == state]
                labels = {**a.labels, "alertname": a.name, "alertstate": state}
                fh.writelines(f"ALERTS{label_text(labels)} 1 {t:.3f}\n" for t in points)
                n += len(points)
        fh.write("# EOF\n")
    return n
