"""The docker-compose stack, read with code: schema, mounted paths, configs the images load."""

from __future__ import annotations

import os
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


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` interpolation, with an empty environment
    unless given one: what a user who set nothing gets."""
    env = env or {}
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume, variables interpolated."""
    return [tuple(interpolate(v).split(":")[:2]) for v in service.get("volumes", [])]  # type: ignore[misc]


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s, t) for s, t in _volumes(service) if s.startswith((".", "/"))]


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
    assert {"trainer", "trainer-gpu", "dcgm-exporter", "prometheus", "alertmanager", "grafana",
            "otel-collector", "tempo"} <= set(services)  # fmt: skip
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":v?\d+\.\d+", image) or image.startswith("esper-trainer:"), name
        assert "latest" not in image, name
    assert "build" in services["trainer"]


def test_every_host_path_the_stack_mounts_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _ in _bind_mounts(service):
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    named = {v for s in compose["services"].values() for v, _ in _volumes(s)}
    named = {v for v in named if not v.startswith((".", "/"))}
    assert named <= set(compose["volumes"]), named - set(compose["volumes"])


def test_grafana_refuses_to_start_without_a_password_yet_compose_needs_none(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """No default password, checked where it matters (Grafana's start), so that `docker compose
    logs` and `down` work without GRAFANA_ADMIN_PASSWORD set (interpolation never fails)."""
    grafana = compose["services"]["grafana"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password == "${GRAFANA_ADMIN_PASSWORD:-}"  # noqa: S105 - the variable, no password
    assert "${" not in interpolate((REPO / "docker-compose.yml").read_text())
    assert ":?" not in (REPO / "docker-compose.yml").read_text()
    script_target = grafana["entrypoint"][-1]
    script = REPO / {t: s for s, t in _bind_mounts(grafana)}[script_target]
    marker = tmp_path / "started"

    def start(password: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "GRAFANA_RUN": "/usr/bin/touch"}
        if password is not None:
            env["GF_SECURITY_ADMIN_PASSWORD"] = password
        return subprocess.run(["sh", str(script), str(marker)], env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip

    for refused in (None, "", "admin"):
        result = start(refused)
        assert result.returncode == 78
        assert "set GRAFANA_ADMIN_PASSWORD" in result.stderr
        assert not marker.exists()
    assert start("s3cret-chosen").returncode == 0
    assert marker.exists()  # Grafana's own entrypoint ran, with the arguments passed on


def test_env_example_names_every_variable_the_stack_reads(compose: dict[str, Any]) -> None:
    used = set(_VARIABLE.findall((REPO / "docker-compose.yml").read_text()))
    names = {name for name, _ in used}
    example = (REPO / ".env.example").read_text()
    documented = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line
                  and not line.startswith("#")}  # fmt: skip
    assert names == documented
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_demo_trainers_start_only_under_their_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["trainer"]["profiles"] == ["demo"]
    gpu = services["trainer-gpu"]
    assert gpu["profiles"] == ["demo-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--device=cuda" in gpu["command"]
    default = [n for n, s in services.items() if "profiles" not in s]
    assert set(default) == {"prometheus", "alertmanager", "grafana", "otel-collector", "tempo"}


def test_dcgm_exporter_runs_in_the_gpu_profile_and_is_scraped(compose: dict[str, Any]) -> None:
    dcgm = compose["services"]["dcgm-exporter"]
    assert dcgm["profiles"] == ["gpu"]
    assert dcgm["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    assert dcgm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    counters = dcgm["command"][dcgm["command"].index("-f") + 1]
    assert {t: s for s, t in _bind_mounts(dcgm)}[counters] == "./deploy/dcgm/counters.csv"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "dcgm"]
    (sd,) = job["dns_sd_configs"]
    assert (sd["names"], sd["port"]) == (["dcgm-exporter"], 9400)


def test_prometheus_reaches_host_jobs_through_the_bind_mounted_targets_directory(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["services"]["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    mounts = {t: s for s, t in _bind_mounts(prometheus)}
    assert mounts["/etc/prometheus/targets"] == "./targets"
    assert (REPO / "targets" / ".gitignore").read_text().startswith("*\n")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "esper-trainer"]
    assert "/etc/prometheus/targets/*.json" in job["file_sd_configs"][0]["files"]


def test_the_collector_serves_its_own_metrics_to_prometheus() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    (reader,) = collector["service"]["telemetry"]["metrics"]["readers"]
    port = reader["pull"]["exporter"]["prometheus"]["port"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "otel-collector"]
    assert job["static_configs"][0]["targets"] == [f"otel-collector:{port}"]


def test_no_tempo_service_map_without_a_metrics_generator() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "esper.yaml").read_text()
    )["datasources"]
    (tempo,) = [d for d in datasources if d["type"] == "tempo"]
    generator = yaml.safe_load((DEPLOY / "tempo" / "tempo.yaml").read_text()).get(
        "metrics_generator"
    )
    assert generator or "serviceMap" not in tempo.get("jsonData", {})


def test_published_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_services_that_can_report_health_have_health_checks(compose: dict[str, Any]) -> None:
    # The collector's image has no shell or HTTP client: Prometheus watches it instead
    # (EsperCollectorDown), see test_the_collector_serves_its_own_metrics_to_prometheus.
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
    for source, target in _volumes(service):
        if not source.startswith((".", "/")) and target.startswith("/etc/prometheus/"):
            (tmp_path / source).mkdir()  # a named volume: empty at first
            text = text.replace(target, str(tmp_path / source))
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
        if line.startswith("COPY --from=report-assets "):
            # The assets stage runs npm ci in /js: what it copies is what ./dev setup's
            # npm ci --prefix js puts in js/.
            for source in line.split()[2:-1]:
                assert source.startswith("/js/"), line
                assert (REPO / source.lstrip("/")).exists(), line
        elif line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
    assert "USER esper" in text


def test_the_node_compose_file_validates_and_mounts_what_the_agent_reads(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    path = REPO / "docker-compose.node.yml"
    result = _check_compose(path)
    assert result.returncode == 0, result.stdout + result.stderr
    node = yaml.safe_load(path.read_text())
    agent = node["services"]["agent"]
    mounts = {t: s for s, t in _bind_mounts(agent)}
    for source in mounts.values():
        assert (REPO / source).exists(), source
    assert mounts["/etc/prometheus/targets"] == "./targets"  # where esper train registers
    assert mounts["/etc/prometheus/agent.yml"] == "./deploy/prometheus/agent.yml"
    assert agent["entrypoint"][-1] == "/etc/prometheus/agent-entrypoint.sh"
    assert agent["image"] == compose["services"]["prometheus"]["image"]
    assert node["services"]["dcgm-exporter"]["profiles"] == ["gpu"]
    # The entrypoint fills the config in; the result is a valid agent config.
    env = {**os.environ, "ESPER_REMOTE_WRITE_URL": "http://store:9090/api/v1/write?a=1&b=2",
           "ESPER_NODE": "n1", "ESPER_AGENT_CONFIG": str(DEPLOY / "prometheus" / "agent.yml"),
           "PROMETHEUS": "echo", "TMPDIR": str(tmp_path)}  # fmt: skip
    done = subprocess.run(["sh", str(DEPLOY / "prometheus" / "agent-entrypoint.sh")], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    filled = Path(done.stdout.split("--config.file=", 1)[1].split()[0])
    config = yaml.safe_load(filled.read_text())
    assert config["remote_write"][0]["url"] == "http://store:9090/api/v1/write?a=1&b=2"
    assert config["global"]["external_labels"] == {"node": "n1"}
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (trainer,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "esper-trainer"]
    (mine,) = [j for j in config["scrape_configs"] if j["job_name"] == "esper-trainer"]
    assert mine["honor_labels"] == trainer["honor_labels"] is True
    assert "/etc/prometheus/targets/*.json" in mine["file_sd_configs"][0]["files"]
    check = subprocess.run(["promtool", "check", "config", "--agent", str(filled)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_agent_refuses_to_start_without_a_store() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_REMOTE_WRITE_URL"}
    done = subprocess.run(["sh", str(DEPLOY / "prometheus" / "agent-entrypoint.sh")], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "set ESPER_REMOTE_WRITE_URL" in done.stderr
