"""Shared fixtures: every test starts and ends with a fresh process-wide hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from esper.leyline import set_strict_payloads
from esper.nissa import STOP_SIGNALS, reset_hub
from tests._stack import Stack, Webhook, alertmanager, prometheus

# Every payload built with make_event is checked where it is built, in this process and in the
# training runs tests start: a field that breaks the catalogue fails the test that emits it.
os.environ["ESPER_STRICT_PAYLOADS"] = "1"
set_strict_payloads(True)


@pytest.fixture(autouse=True)
def _fresh_global_hub() -> Iterator[None]:
    reset_hub()
    yield
    reset_hub(timeout=10)


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A test that opens a run session takes over the stop signals, as the command does."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


STACK_TRAIN = [
    "--n-envs", "2", "--episodes", "8", "--max-epochs", "12", "--seed", "1",
    "--telemetry-level", "debug", "--inject-fault", "exploding-gradients@8",
    "--inject-fault", "nan-loss@10", "--metrics-port", "0", "--metrics-linger", "30",
]  # fmt: skip
"""A short, fault-injected PPO run: exploding gradients and a NaN loss in every episode's
first env, so the alert, rollback and anomaly panels have data."""


@contextmanager
def _scraped_run(tmp: Path, *extra: str) -> Iterator[Stack]:
    """A real Alertmanager (delivering to a loopback webhook) and a real Prometheus with the
    shipped rules, which scraped a real ``esper train ppo`` run of ``STACK_TRAIN`` (and
    ``extra`` flags) to its end."""
    sd = tmp / "targets"
    webhook = Webhook()
    try:
        with (
            alertmanager(tmp / "am", webhook.url) as am_port,
            prometheus(tmp / "prom", sd_dir=sd, alertmanager_port=am_port) as base,
        ):
            start = time.time()
            train = subprocess.run(
                [sys.executable, "-m", "esper.scripts.train", "ppo", *STACK_TRAIN, *extra,
                 "--metrics-sd-dir", str(sd), "--telemetry-dir", str(tmp / "runs")],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            assert train.returncode == 0, train.stderr
            (run_dir,) = (tmp / "runs").iterdir()
            yield Stack(base, webhook, train, start, time.time(), run_dir)
    finally:
        webhook.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The end-to-end tests' shared run, at the default detail (every env's series)."""
    with _scraped_run(tmp_path_factory.mktemp("stack")) as run:
        yield run


@pytest.fixture(scope="session")
def rank_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same run at ``--metrics-detail rank``: per-env series folded over the envs."""
    with _scraped_run(tmp_path_factory.mktemp("rank-stack"), "--metrics-detail", "rank") as run:
        yield run
