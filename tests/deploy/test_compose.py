"""The docker-compose stack, read with code: schema, mounted paths, configs the images load."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._stack import DEPLOY, REPO


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the Compose Specification schema it ships (kept current there)."""
    tool = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = _check_compose(REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validator_rejects_a_file_off_the_specification(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((REPO / "docker-compose.yml").read_text() + "\nservicez: {}\n")
    result = _check_compose(broken)
    assert result.returncode != 0
    assert "servicez" in result.stdout + result.stderr


def test_the_stack_has_every_service_with_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"trainer", "trainer-gpu", "prometheus", "alertmanager", "grafana", "otel-collector",
            "tempo"} <= set(services)  # fmt: skip
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":v?\d+\.\d+", image) or image.startswith("esper-trainer:"), name
        assert "latest" not in image, name
    assert "build" in services["trainer"]


def test_every_host_path_the_stack_mounts_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _ in _bind_mounts(service):
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    named = {v for v in named if not v.startswith((".", "/"))}
    assert named <= set(compose["volumes"]), named - set(compose["volumes"])


def test_grafana_password_comes_from_the_environment_without_a_default(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password
    text = (REPO / "docker-compose.yml").read_text()
    assert ":-" not in text, "no variable in the stack may fall back to a default"


def test_gpu_profile_reserves_a_gpu_for_the_trainer(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--device=cuda" in gpu["command"]
    assert "profiles" not in compose["services"]["trainer"]


def test_published_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_services_that_can_report_health_have_health_checks(compose: dict[str, Any]) -> None:
    for name in ("trainer", "prometheus", "alertmanager", "grafana", "tempo"):
        assert "healthcheck" in compose["services"][name], name


def test_prometheus_config_as_mounted_passes_promtool(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Rebuild the container's file layout from the mounts and check it with promtool."""
    service = compose["services"]["prometheus"]
    mounts = {target: source for source, target in _bind_mounts(service)}
    config_path = next(
        a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file")
    )
    text = (REPO / mounts[config_path]).read_text()
    for target, source in mounts.items():
        text = text.replace(target, str((REPO / source).resolve()))
    targets_dir = next(v.split(":")[1] for v in service["volumes"] if v.startswith("targets:"))
    (tmp_path / "targets").mkdir()
    text = text.replace(targets_dir, str(tmp_path / "targets"))
    (tmp_path / "prometheus.yml").write_text(text)
    doc = yaml.safe_load(text)
    for rule_file in doc["rule_files"]:
        assert Path(rule_file).exists(), f"{rule_file} is not mounted"
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_alertmanager_config_passes_amtool(compose: dict[str, Any]) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool comes with the Debian package prometheus-alertmanager"
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_trainer_sends_traces_to_the_collector_and_the_collector_to_tempo(
    compose: dict[str, Any],
) -> None:
    command = compose["services"]["trainer"]["command"]
    assert "--otlp-endpoint=http://otel-collector:4318" in command
    assert "--metrics-addr=0.0.0.0" in command
    collector = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["processors"] == ["memory_limiter", "batch"]
    (exporter,) = pipeline["exporters"]
    assert collector["exporters"][exporter]["endpoint"] == "tempo:4317"
    tempo = yaml.safe_load((DEPLOY / "tempo" / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(
        ":4317"
    )


def test_grafana_provisioning_points_at_the_stack(compose: dict[str, Any]) -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "esper.yaml").read_text()
    )["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["tempo"]["url"] == "http://tempo:3200"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "esper.yaml").read_text()
    )["providers"][0]
    mounts = {t: s for s, t in _bind_mounts(compose["services"]["grafana"])}
    assert mounts[provider["options"]["path"]] == "./dashboards"
    assert list((REPO / "dashboards").glob("*.json"))


def test_dockerfile_copies_only_what_exists() -> None:
    text = (REPO / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
    assert "USER esper" in text
