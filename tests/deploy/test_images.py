"""The images the stack builds: every torch wheel index pinned is one PyTorch publishes for
the pinned torch version (deploy/trainer/torch-wheels.toml, kept with the pin)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._stack import REPO

INDEX = re.compile(r"^https://download\.pytorch\.org/whl/(?P<tag>[a-z0-9]+)$")


def published() -> dict[str, set[str]]:
    table = tomllib.loads((REPO / "deploy" / "trainer" / "torch-wheels.toml").read_text())
    return {version: set(entry["indexes"]) for version, entry in table.items()}


def dockerfile_args(path: Path = REPO / "Dockerfile") -> dict[str, str]:
    args = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"ARG (\w+)=(\S+)", line):
            args[m.group(1)] = m.group(2)
    return args


def pinned_builds(dockerfile: dict[str, str], compose: dict[str, Any]) -> list[tuple[str, str]]:
    """(torch version, index URL) of every image build: the Dockerfile's defaults and each
    compose service's build arguments over them."""
    builds = [(dockerfile["TORCH_VERSION"], dockerfile["TORCH_INDEX"])]
    for service in compose["services"].values():
        args = (service.get("build") or {}).get("args", {})
        if args:
            builds.append((args.get("TORCH_VERSION", dockerfile["TORCH_VERSION"]),
                           args.get("TORCH_INDEX", dockerfile["TORCH_INDEX"])))  # fmt: skip
    return builds


def unpublished(builds: list[tuple[str, str]], table: dict[str, set[str]]) -> list[str]:
    problems = []
    for version, url in builds:
        m = INDEX.match(url)
        if m is None:
            problems.append(f"{url}: not a download.pytorch.org wheel index")
        elif version not in table:
            problems.append(f"torch=={version}: not in deploy/trainer/torch-wheels.toml")
        elif m.group("tag") not in table[version]:
            problems.append(f"torch=={version} is not published at {url}")
    return problems


def test_every_pinned_torch_index_publishes_the_pinned_version() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    builds = pinned_builds(dockerfile_args(), compose)
    assert len(builds) >= 3
    assert {url.rsplit("/", 1)[1] for _, url in builds} == {"cpu", "cu126"}
    assert unpublished(builds, published()) == []


@pytest.mark.parametrize(
    ("version", "tag"), [("2.13.0", "cu128"), ("2.13.0", "cu121"), ("2.14.0", "cu126")]
)
def test_a_pin_pytorch_does_not_publish_fails(version: str, tag: str) -> None:
    """The check catches the failure that broke the GPU image (torch 2.13.0 from cu128)."""
    builds = [(version, f"https://download.pytorch.org/whl/{tag}")]
    assert len(unpublished(builds, published())) == 1


def test_the_trainer_pins_torch_to_the_version_the_project_tests() -> None:
    """The image runs the torch that ./dev installs for the test suite."""
    dev = (REPO / "dev").read_text().splitlines()
    assert f"TORCH_VERSION={dockerfile_args()['TORCH_VERSION']}" in dev, "the pins differ"


def test_every_image_is_pinned_to_a_release() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    stages = re.findall(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert stages
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages[-1]), "the trainer runs on python"
    for image in stages:  # the report's assets stage (node) too
        assert re.fullmatch(r"[a-z]+:\d+\.\d+\.\d+(-[a-z]+)*", image), f"{image} is not pinned"
    for name, service in compose["services"].items():
        image = service["image"]
        if image.startswith("esper-trainer:"):
            continue
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"
