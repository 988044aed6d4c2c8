"""The documented "job on the host, stack in compose" path, with the shipped configs.

A real ``esper train ppo`` on this host registers itself the way docs/LIVE.md tells a host job
to (``--metrics-sd-dir`` into the directory compose bind-mounts into Prometheus); a real
Prometheus runs the shipped ``prometheus.yml`` with its container paths mapped to the host
sources of compose's mounts, scrapes the run, and evaluates the shipped alert rules; a real
Alertmanager runs the shipped ``alertmanager.yml`` with its secret given the documented way (the
URL in ``secrets/chat_webhook_url``) and delivers the run's critical alert to a chat webhook on
loopback.

Only three things differ from a compose deployment, each because no Docker engine runs here:
the target names 127.0.0.1 instead of host.docker.internal, compose service names
(alertmanager:9093) are this test's loopback ports, and the intervals are 1 s instead of 5 to
15 s so the test does not wait minutes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._stack import DEPLOY, REPO, JsonReceiver, _process, free_port, query, wait_until

pytestmark = pytest.mark.slow

SECRETS = "/etc/alertmanager/secrets"


class ChatWebhook(JsonReceiver):
    """A Slack-compatible incoming webhook on loopback that records every message."""

    path = "/services/T0/B0/secret"

    def wait_for(self, text: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((m for m in self.bodies if text in json.dumps(m)), None)

        return self.first(
            found, timeout, lambda: f"no message with {text!r} in {timeout} s: {self.bodies}"
        )


@dataclass
class HostStack:
    prometheus: str
    chat: ChatWebhook
    targets: Path
    train: subprocess.CompletedProcess[str]
    registered: list[dict[str, Any]]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def _shipped_alertmanager(tmp: Path, secrets: Path) -> Path:
    compose = _compose()["services"]["alertmanager"]
    assert any(v.endswith(f":{SECRETS}:ro") for v in compose["volumes"])
    text = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text().replace(SECRETS, str(secrets))
    (tmp / "alertmanager.yml").write_text(text)
    return tmp / "alertmanager.yml"


def _shipped_prometheus(tmp: Path, targets: Path, am_port: int, interval: str = "1s") -> Path:
    """deploy/prometheus/prometheus.yml with each container path mapped to its mount's host
    source, compose service names to loopback, and short intervals (1 s by default)."""
    service = _compose()["services"]["prometheus"]
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    for volume in service["volumes"]:
        source, target = volume.rsplit(":", 2)[0].rsplit(":", 1)[0], volume.split(":")[-2]
        if target == "/etc/prometheus/targets":
            text = text.replace(target + "/", f"{targets}/")  # stands for ./targets
        elif target == "/etc/prometheus/demo-targets":
            (tmp / "demo-targets").mkdir()
            text = text.replace(target + "/", f"{tmp / 'demo-targets'}/")
        elif source.startswith("./"):
            text = text.replace(target, str(REPO / source))
    text = text.replace("alertmanager:9093", f"127.0.0.1:{am_port}")
    config = yaml.safe_load(text)
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        for sd in job.get("file_sd_configs", []):
            sd["refresh_interval"] = "1s"
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    return tmp / "prometheus.yml"


@contextmanager
def _host_stack(
    tmp: Path, train_args: list[str], interval: str = "1s", *, register_late: bool = False
) -> Iterator[HostStack]:
    """The shipped Alertmanager and Prometheus (scraping every ``interval``) on loopback, and
    one ``esper train ppo`` run with ``train_args`` registered the documented way, finished.

    ``register_late``: the run registers in a directory of its own, and its target reaches
    Prometheus only once training is over and the run waits for its final scrape: the first
    scrape Prometheus ever makes of the run sees its final state."""
    targets, secrets, staged = tmp / "targets", tmp / "secrets", tmp / "staged"
    targets.mkdir()
    secrets.mkdir()
    staged.mkdir()
    chat = ChatWebhook()
    (secrets / "chat_webhook_url").write_text(chat.url + "\n")  # the documented way
    am_port, prom_port = free_port(), free_port()
    am_cmd = [
        "prometheus-alertmanager", f"--config.file={_shipped_alertmanager(tmp, secrets)}",
        f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"
    config = _shipped_prometheus(tmp, targets, am_port, interval)
    prom_cmd = [
        "prometheus", f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
        "--rules.alert.resend-delay=1s",
    ]  # fmt: skip
    registered: list[dict[str, Any]] = []
    try:
        with (
            _process(am_cmd, tmp / "am.log", f"http://127.0.0.1:{am_port}/-/ready", "Alertmanager"),
            _process(prom_cmd, tmp / "prom.log", f"{base}/-/ready", "Prometheus"),
        ):
            job = subprocess.Popen(
                [sys.executable, "-m", "esper.scripts.train", "ppo", *train_args,
                 "--metrics-addr", "lo", "--metrics-port", "0",
                 "--metrics-sd-dir", str(staged if register_late else targets),
                 "--metrics-sd-host", "127.0.0.1",
                 "--metrics-linger", "60", "--telemetry-dir", str(tmp / "runs")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            head = ""
            if register_late:
                assert job.stdout is not None
                for line in job.stdout:  # the run says when training is over
                    head += line
                    if line.startswith("Waiting up to"):
                        break
                for path in staged.glob("*.json"):
                    shutil.copy(path, targets / path.name)
            # While it runs, its target is in the bind-mounted directory.
            wait_until(lambda: any(targets.glob("*.json")) or job.poll() is not None, 120,
                       "the host job's target file")  # fmt: skip
            for path in targets.glob("*.json"):
                registered.extend(json.loads(path.read_text()))
            stdout, stderr = job.communicate(timeout=600)
            stdout = head + stdout
            if register_late:  # as the run itself does when it ends
                for path in targets.glob("*.json"):
                    path.unlink()
            train = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
            assert train.returncode == 0, stderr
            yield HostStack(base, chat, targets, train, registered)
    finally:
        chat.close()


@pytest.fixture(scope="module")
def host_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostStack]:
    train_args = ["--n-envs", "2", "--episodes", "4", "--max-epochs", "10", "--seed", "3",
                  "--inject-fault", "exploding-gradients@4"]  # fmt: skip
    with _host_stack(tmp_path_factory.mktemp("host"), train_args) as stack:
        yield stack


def test_a_run_first_scraped_after_its_anomaly_still_pages(tmp_path: Path) -> None:
    """The timing that made this module flaky, as a case of its own, made certain: 2 s scrapes,
    and a run whose exploding gradients come in its last epoch, first scraped (through file_sd)
    only when training is over. Prometheus sees the counter once, already above zero, in the
    final scrape that --metrics-linger waits for; then the target is gone and every series goes
    stale. The shipped rules must keep the alert firing past the critical route's 10 s
    group_wait, and the shipped Alertmanager must deliver it. (With the rules as they were,
    the alert resolved within one scrape interval and nothing was sent.)"""
    train_args = ["--n-envs", "2", "--episodes", "1", "--max-epochs", "3", "--seed", "3",
                  "--inject-fault", "exploding-gradients@3"]  # fmt: skip
    with _host_stack(tmp_path, train_args, interval="2s", register_late=True) as stack:
        summary = stack.train.stdout
        assert "final state read by every Prometheus that scraped" in summary, summary
        lowest = query(stack.prometheus, 'min_over_time(esper_gradient_anomalies_total'
                       '{kind="exploding",scope="host"}[10m])')  # fmt: skip
        assert [float(r["value"][1]) for r in lowest] == [1.0]  # never seen at zero
        message = stack.chat.wait_for("EsperExplodingGradients", timeout=120)
        (attachment,) = message["attachments"]
        assert re.match(r"\[FIRING:\d+\] EsperExplodingGradients \(critical\)", attachment["title"])


def test_the_host_job_registers_through_the_bind_mounted_directory(host_stack: HostStack) -> None:
    (entry,) = host_stack.registered
    (target,) = entry["targets"]
    assert target.startswith("127.0.0.1:")
    assert entry["labels"]["mode"] == "ppo"
    # A finished run removes its target.
    assert list(host_stack.targets.glob("*.json")) == []


def test_prometheus_scraped_the_host_job_with_the_shipped_config(host_stack: HostStack) -> None:
    (target,) = host_stack.registered[0]["targets"]
    up = query(
        host_stack.prometheus, f'max_over_time(up{{job="esper-trainer",instance="{target}"}}[10m])'
    )
    assert [float(r["value"][1]) for r in up] == [1.0]
    episodes = query(host_stack.prometheus, "max_over_time(esper_episodes_completed_total[10m])")
    assert [float(r["value"][1]) for r in episodes] == [4.0]
    assert episodes[0]["metric"]["run_id"] == host_stack.registered[0]["labels"]["run_id"]


def test_a_critical_alert_reaches_the_chat_webhook_through_the_shipped_alertmanager_config(
    host_stack: HostStack,
) -> None:
    message = host_stack.chat.wait_for("EsperExplodingGradients", timeout=120)
    (attachment,) = message["attachments"]
    assert re.match(r"\[FIRING:\d+\] EsperExplodingGradients \(critical\)", attachment["title"])
    assert "Exploding gradients in host" in attachment["text"]
    assert "Runbook:" in attachment["text"]


def test_alertmanager_counts_the_delivery_and_no_failure(host_stack: HostStack) -> None:
    """Prometheus scrapes Alertmanager (the shipped alertmanager job): the delivery is counted,
    and nothing failed, so EsperAlertDeliveryFailing stays quiet."""
    host_stack.chat.wait_for("EsperExplodingGradients", timeout=120)

    def sent() -> float:
        promql = 'sum(alertmanager_notifications_total{job="alertmanager",integration="slack"})'
        r = query(host_stack.prometheus, promql)
        return float(r[0]["value"][1]) if r else 0.0

    wait_until(lambda: sent() >= 1, 60, "Prometheus to see Alertmanager's sent notification")
    failed = query(host_stack.prometheus,
                   'sum(alertmanager_notifications_failed_total{job="alertmanager"})')  # fmt: skip
    assert [float(r["value"][1]) for r in failed] == [0.0]
