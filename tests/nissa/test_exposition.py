"""The cached ``/metrics`` is what ``generate_latest`` renders for the same registry, byte for
byte, after every kind of change; promtool accepts it; concurrent scrapes stay whole."""

from __future__ import annotations

import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from esper.kasmina import BLUEPRINT_IDS, SLOT_IDS
from esper.leyline import TelemetryEvent, TelemetryEventType, example_payload, make_event
from esper.nissa import NissaHub
from esper.nissa.prometheus import PrometheusOutput

ET = TelemetryEventType


def _event(kind: tuple[TelemetryEventType, str | None], **over: object) -> TelemetryEvent:
    return make_event(kind[0], example_payload(*kind, **over))


SEED = {"stage": "BLENDING", "blueprint_id": "norm", "alpha": 0.5, "accuracy_delta": 1.0,
        "epochs_in_stage": 2, "gradient_norm": 0.3, "gradient_total_norm": 1.2,
        "gradient_health": 0.9, "has_vanishing": False, "has_exploding": False}  # fmt: skip


def _script() -> list[TelemetryEvent]:
    """Every kind of write: gauges, counters, histograms, new series, removed series, series
    removed and born again, values that need Go's float formatting, label values to escape."""
    return [
        _event(
            (ET.TRAINING_STARTED, None),
            slot_ids=list(SLOT_IDS),
            blueprint_ids=list(BLUEPRINT_IDS),
            task='dig"its\\',
        ),
        _event((ET.EPOCH_COMPLETED, "env"), env_id=0, seeds=dict.fromkeys(SLOT_IDS, SEED)),
        _event((ET.EPOCH_COMPLETED, "env"), env_id=1, val_loss=1e22, seeds={}),
        _event((ET.PPO_UPDATE_COMPLETED, None), early_stop_epoch=None, update_time_ms=12.5),
        _event((ET.EPOCH_COMPLETED, "env"), env_id=0, seeds={SLOT_IDS[0]: SEED}),  # removals
        _event((ET.ANALYTICS_SNAPSHOT, "collectives"), wait_seconds={"broadcast": [0.5, 3e-5]}),
        _event(
            (ET.EPOCH_COMPLETED, "env"),
            env_id=0,
            val_loss=float("nan"),
            seeds=dict.fromkeys(SLOT_IDS, SEED),
        ),  # born again
        _event((ET.SEED_CULLED, None), reason="controller"),
        _event((ET.GRADIENT_ANOMALY, None)),
    ]


def test_every_render_equals_generate_latest_of_the_same_registry() -> None:
    hub = NissaHub()
    out = PrometheusOutput(hub_stats=hub.stats, cuda=False)
    assert out.render() == generate_latest(out.registry)
    for event in _script():
        out.emit(event)
        assert out.render() == generate_latest(out.registry), event.event_type
        assert out.render() == generate_latest(out.registry)  # nothing changed: the cache
    hub.close()


def test_the_cached_exposition_passes_promtool(tmp_path: Path) -> None:
    out = PrometheusOutput(cuda=False, multi_rank=True)
    for event in _script():
        out.emit(event)
    path = tmp_path / "metrics.txt"
    path.write_bytes(out.render())
    check = subprocess.run(["promtool", "check", "metrics"], input=path.read_bytes(),
                           capture_output=True, check=False)  # fmt: skip
    # promtool's lint names metrics it would name otherwise; it fails only on a broken format.
    assert b"error" not in check.stderr.lower(), check.stderr


def test_concurrent_scrapes_during_writes_each_get_a_whole_exposition() -> None:
    out = PrometheusOutput(cuda=False)
    port = out.serve(0)
    stop = threading.Event()
    errors: list[str] = []

    def write() -> None:
        env = 0
        while not stop.is_set():
            out.emit(_event((ET.EPOCH_COMPLETED, "env"), env_id=env % 64,
                            seeds=dict.fromkeys(SLOT_IDS[: env % 3], SEED)))  # fmt: skip
            env += 1

    def scrape() -> None:
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                body = r.read()
            # Whole: every family's header once, every sample line complete.
            lines = body.decode().splitlines()
            if not all(ln.startswith("#") or len(ln.rsplit(" ", 1)) == 2 for ln in lines):
                errors.append("a torn line")
            if body.count(b"# TYPE esper_env_val_loss gauge") != 1:
                errors.append("a family twice or missing")

    writer = threading.Thread(target=write)
    writer.start()
    scrapers = [threading.Thread(target=scrape) for _ in range(4)]
    for t in scrapers:
        t.start()
    for t in scrapers:
        t.join()
    stop.set()
    writer.join()
    assert not errors
    assert out.render() == generate_latest(out.registry)
    out.close()


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_only_get_is_served(method: str) -> None:
    out = PrometheusOutput(cuda=False)
    port = out.serve(0)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method=method)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert info.value.code == 405
    info.value.close()
    out.close()
