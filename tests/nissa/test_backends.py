"""The one backend factory: every command builds its backends here, from a BackendSpec."""

from __future__ import annotations

import ast
import urllib.request
from pathlib import Path

import pytest

from esper.leyline import BackendConfigError, TelemetryEvent, TelemetryEventType
from esper.nissa import NissaHub, read_events
from esper.nissa.backends import BackendSpec, attach_backends

SRC = Path(__file__).resolve().parents[2] / "src" / "esper"
BACKEND_CLASSES = {"FileOutput", "DirectoryOutput", "PrometheusOutput", "OTelOutput"}


def test_a_spec_builds_the_backends_it_names_and_announces_where_they_write(
    tmp_path: Path,
) -> None:
    hub = NissaHub()
    said: list[str] = []
    spec = BackendSpec(
        telemetry_file=tmp_path / "events.jsonl", telemetry_dir=tmp_path / "runs",
        metrics_port=0, metrics_sd_dir=tmp_path / "targets", metrics_sd_labels={"mode": "x"},
    )  # fmt: skip
    setup = attach_backends(hub, spec, announce=said.append)
    try:
        assert [b.name for b in hub.stats().backends] == [
            f"file:{tmp_path / 'events.jsonl'}",
            f"dir:{next((tmp_path / 'runs').iterdir())}",
            "PrometheusOutput",
        ]
        assert setup.prometheus is not None
        url = next(d for d in setup.destinations if d.startswith("Prometheus")).split(": ")[1]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
            assert b"esper_run_info" in r.read()
        assert list((tmp_path / "targets").glob("*.json"))
        assert said[0].startswith("Telemetry will be saved to: ")
        assert said[1] == f"Serving Prometheus metrics at {url}"
        hub.emit(TelemetryEvent(TelemetryEventType.TELEMETRY_WARNING,
                                data={"reason": "events_dropped", "detail": "x"}))  # fmt: skip
    finally:
        hub.close()
    assert len(read_events(tmp_path / "events.jsonl").events) == 1


def test_an_empty_spec_attaches_nothing() -> None:
    hub = NissaHub()
    setup = attach_backends(hub, BackendSpec(), announce=lambda line: None)
    assert (setup.destinations, hub.stats().backends) == ([], ())
    hub.close()


def test_a_bad_path_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    hub = NissaHub()
    with pytest.raises(BackendConfigError, match=str(blocker)):
        attach_backends(hub, BackendSpec(telemetry_dir=blocker / "runs"))
    hub.close()


def _constructed(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    } & BACKEND_CLASSES


def test_no_command_builds_a_backend_itself() -> None:
    """Adding a backend is its module, a BackendSpec field and its branch in the factory:
    the commands (train, telemetry replay, offline compare) only fill in a spec."""
    sessions = {p.name for p in (SRC / "scripts").glob("*.py") if "RunSession" in p.read_text()}
    assert {"telemetry.py", "offline.py"} <= sessions  # train's is esper.runs.launch's
    assert "RunSession(" in (SRC / "runs" / "launch.py").read_text()
    attaching = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                 if "attach_backends(" in p.read_text()}  # fmt: skip
    assert attaching == {"nissa/backends.py", "runs/session.py"}
    for path in (SRC / "scripts").glob("*.py"):
        assert _constructed(path) == set(), path.name
