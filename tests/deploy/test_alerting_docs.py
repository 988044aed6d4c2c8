"""docs/ALERTING.md's receiver snippets, merged into the shipped Alertmanager config, pass
amtool (the webhook one needs Alertmanager 0.26+, which the stack runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._stack import DEPLOY, REPO

DOC = REPO / "docs" / "ALERTING.md"


def snippets() -> list[dict[str, Any]]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]


def _amtool_version(amtool: str) -> tuple[int, int]:
    out = subprocess.run([amtool, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def _merged(snippet: dict[str, Any]) -> dict[str, Any]:
    config = dict(yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text()))
    config["global"] = {**config.get("global", {}), **snippet.get("global", {})}
    config["receivers"] = snippet["receivers"]
    return config


def test_the_page_documents_webhook_and_email() -> None:
    kinds = {key for s in snippets() for r in s["receivers"] for key in r if key != "name"}
    assert kinds == {"webhook_configs", "email_configs"}
    text = DOC.read_text()
    assert "chat_webhook_url" in text
    shipped = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    (receiver,) = shipped["receivers"]
    (slack,) = receiver["slack_configs"]
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/chat_webhook_url"


@pytest.mark.parametrize("index", range(len(snippets())))
def test_each_snippet_passes_amtool_in_the_shipped_config(index: int, tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool comes with the Debian package prometheus-alertmanager"
    snippet = snippets()[index]
    uses_url_file = any(
        "url_file" in c for r in snippet["receivers"] for c in r.get("webhook_configs", [])
    )
    if uses_url_file and _amtool_version(amtool) < (0, 26):
        pytest.skip("webhook url_file needs Alertmanager 0.26+; this amtool is older")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(_merged(snippet)))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for secret in re.findall(r"/etc/alertmanager/secrets/(\w+)", path.read_text()):
        assert secret in (DEPLOY / "alertmanager" / "secrets" / "README.md").read_text()
