"""Every flag of every subcommand, given a bad value, is refused before any work: exit 2, a
message naming the flag, no traceback. A flag added without a bad value here fails the walk's
own check (``test_the_walk_covers_every_flag``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.scripts import (
    cli,
    dashboards,
    docs,
    offline,
    report,
    sanctum,
    targets,
    telemetry,
    train,
)

RUN = str(Path(__file__).resolve().parents[1] / "data" / "sanctum_run")
FILE = "FILE"
"""Stands for an existing regular file: FILE/x is a path no one can write (its parent is a
file), and FILE where a directory is expected is the wrong kind."""
MISSING = "/nonexistent/esper-walk"

PARSERS = {
    "train": train.build_parser(),
    "telemetry": telemetry.build_parser(),
    "report": report.build_parser(),
    "sanctum": sanctum.build_parser(),
    "targets": targets.build_parser(),
    "offline": offline.build_parser(),
    "docs": docs.build_parser(),
    "dashboards": dashboards.build_parser(),
}

BASE = {
    "train": ["train", "ppo"],
    "telemetry summarize": ["telemetry", "summarize", RUN],
    "telemetry replay": ["telemetry", "replay", RUN, "--telemetry-dir", "OUTDIR"],
    "telemetry backfill": ["telemetry", "backfill", RUN, "--out", "OUTDIR/blocks"],
    "report": ["report", RUN, "-o", "OUTDIR/r.html"],
    "sanctum": ["sanctum", RUN],
    "targets list": ["targets", "list", "OUTDIR"],
    "targets prune": ["targets", "prune", "OUTDIR"],
    "offline record": ["offline", "record", "--out", "OUTDIR/d.pt"],
    "offline train": ["offline", "train", "--data", FILE, "--out", "OUTDIR/m.pt"],
    "offline compare": ["offline", "compare", "--model", FILE],
    "docs": ["docs", "--check", "--out", "OUTDIR"],
    "dashboards": ["dashboards", "--check", "--out", "OUTDIR"],
}
"""A command line each flag's bad value is added to (valid but for that value)."""

PORT = ["--metrics-port", "0"]
BAD: dict[tuple[str, str], list[str]] = {
    ("train", "--task"): ["--task", "imagenet"],
    ("train", "--data-dir"): ["--task", "cifar10", "--data-dir", MISSING],
    ("train", "--device"): ["--device", "gpu9"],
    ("train", "--seed"): ["--seed=99999999999999999999"],
    ("train", "--episodes"): ["--episodes", "0"],
    ("train", "--max-epochs"): ["--max-epochs", "0"],
    ("train", "--n-envs"): ["--n-envs", "0"],
    ("train", "--threads"): ["--threads", "0"],
    ("train", "--collective-timeout"): ["--collective-timeout", "nan"],
    ("train", "--vectorized"): ["--vectorized=1"],
    ("train", "--lr"): ["--lr", "nan"],
    ("train", "--clip-ratio"): ["--clip-ratio", "inf"],
    ("train", "--entropy-coef"): ["--entropy-coef=-1"],
    ("train", "--entropy-anneal"): ["--entropy-anneal=-1"],
    ("train", "--param-budget"): ["--param-budget=-5"],
    ("train", "--save"): ["--save", f"{FILE}/ckpt.pt"],
    ("train", "--resume"): ["--resume", MISSING],
    ("train", "--counterfactual"): ["--counterfactual", "sometimes"],
    ("train", "--baseline"): ["--baseline=1"],
    ("train", "--inject-fault"): ["--inject-fault", "nan-loss@x"],
    ("train", "--telemetry-file"): ["--telemetry-file", f"{FILE}/e.jsonl"],
    ("train", "--telemetry-dir"): ["--telemetry-dir", FILE],
    ("train", "--telemetry-level"): ["--telemetry-level", "loud"],
    ("train", "--escalate-epochs"): ["--escalate-epochs=-1"],
    ("train", "--telemetry-lifecycle-only"): ["--telemetry-lifecycle-only=1"],
    ("train", "--metrics-addr"): ["--metrics-addr", "not an address", *PORT],
    ("train", "--metrics-port"): ["--metrics-port", "70000"],
    ("train", "--metrics-tls-cert"): ["--metrics-tls-cert", MISSING, "--metrics-tls-key", FILE,
                                      *PORT],
    ("train", "--metrics-tls-key"): ["--metrics-tls-cert", FILE, "--metrics-tls-key", MISSING,
                                     *PORT],
    ("train", "--metrics-tls-client-ca"): ["--metrics-tls-client-ca", MISSING, *PORT],
    ("train", "--metrics-sd-dir"): ["--metrics-sd-dir", FILE, *PORT],
    ("train", "--metrics-sd-host"): ["--metrics-sd-host", "bad host!", *PORT],
    ("train", "--metrics-linger"): ["--metrics-linger=-1", *PORT],
    ("train", "--metrics-detail"): ["--metrics-detail", "node", *PORT],
    ("train", "--otlp-endpoint"): ["--otlp-endpoint", "ftp://127.0.0.1:4318"],
    ("train", "--sanctum"): ["--sanctum=1"],
    ("train", "--no-report"): ["--no-report=1"],
    ("telemetry summarize", "--strict"): ["--strict=1"],
    ("telemetry replay", "--strict"): ["--strict=1"],
    ("telemetry replay", "--telemetry-file"): ["--telemetry-file", f"{FILE}/e.jsonl"],
    ("telemetry replay", "--telemetry-dir"): ["--telemetry-dir", FILE],
    ("telemetry replay", "--otlp-endpoint"): ["--otlp-endpoint", "not a url"],
    ("telemetry backfill", "--out"): ["--out", FILE],
    ("telemetry backfill", "--openmetrics"): ["--openmetrics", f"{FILE}/x.om"],
    ("telemetry backfill", "--alerts"): ["--alerts=1"],
    ("telemetry backfill", "--align-start"): ["--align-start", "nan"],
    ("telemetry backfill", "--metrics-detail"): ["--metrics-detail", "node"],
    ("telemetry backfill", "--rules"): ["--rules", MISSING],
    ("telemetry backfill", "--retention"): ["--retention", "forever"],
    ("telemetry backfill", "--strict"): ["--strict=1"],
    ("report", "-o"): ["-o", f"{FILE}/r.html"],
    ("report", "--strict"): ["--strict=1"],
    ("report", "--alerts"): ["--alerts=1"],
    ("report", "--rules"): ["--rules", MISSING],
    ("targets prune", "--unreachable"): ["--unreachable=1"],
    ("targets prune", "--dry-run"): ["--dry-run=1"],
    ("offline record", "--seeds"): ["--seeds=-1"],
    ("offline record", "--task"): ["--task", "imagenet"],
    ("offline record", "--max-epochs"): ["--max-epochs", "1"],
    ("offline record", "--use-telemetry"): ["--use-telemetry=1"],
    ("offline record", "--out"): ["--out", f"{FILE}/d.pt"],
    ("offline train", "--data"): ["--data", MISSING],
    ("offline train", "--steps"): ["--steps", "0"],
    ("offline train", "--seed"): ["--seed=-1"],
    ("offline train", "--out"): ["--out", f"{FILE}/m.pt"],
    ("offline compare", "--model"): ["--model", MISSING],
    ("offline compare", "--seeds"): ["--seeds=-1"],
    ("offline compare", "--task"): ["--task", "imagenet"],
    ("offline compare", "--max-epochs"): ["--max-epochs", "1"],
    ("offline compare", "--telemetry-dir"): ["--telemetry-dir", FILE],
    ("docs", "--out"): ["--out", FILE],
    ("docs", "--check"): ["--check=1"],
    ("dashboards", "--out"): ["--out", FILE],
    ("dashboards", "--check"): ["--check=1"],
}  # fmt: skip
"""(command, flag) -> the flags that give it a bad value (with what it needs to be read)."""


def _flags(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _flags(subparser, f"{name} {sub}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            # One name per flag: the long one (``-o/--output`` is ``-o`` in the table).
            yield name, action.option_strings[0]


def test_the_walk_covers_every_flag() -> None:
    declared = {pair for name, p in PARSERS.items() for pair in _flags(p, name)}
    assert declared - set(BAD) == set(), "a flag with no bad value in the walk"
    assert set(BAD) - declared == set(), "a bad value for a flag that no longer exists"


@pytest.mark.parametrize(("command", "flag"), sorted(BAD), ids=str)
def test_a_bad_value_is_refused_naming_the_flag(
    command: str, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("not a directory\n")
    out = tmp_path / "out"
    out.mkdir()

    def fill(arg: str) -> str:
        return arg.replace(FILE, str(existing)).replace("OUTDIR", str(out))

    argv = [fill(a) for a in [*BASE[command], *BAD[(command, flag)]]]
    before = sorted(p.name for p in out.iterdir())
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    assert code == 2, f"{' '.join(argv)} -> exit {code}: {err[-600:]}"
    names = {flag, *(o for o in ("--output",) if flag == "-o")}
    assert any(n in err for n in names), f"{flag} not named: {err[-600:]}"
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == before, "no work started, nothing written"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-5"),
    ],
)
def test_a_bad_otel_variable_is_refused_naming_it_before_training(
    variable: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "TIMEOUT" in variable:  # a timeout is read with an endpoint
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(variable, value)
    code = cli.main(["train", "ppo", "--telemetry-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err[-600:]
    assert f"{variable}={value!r}" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/events.jsonl")), "no training recorded"


AGENT = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ESPER_REMOTE_WRITE_URL", "ftp://store:9090/api/v1/write"),
        ("ESPER_REMOTE_WRITE_URL", "http://store:9090/a b"),
        ("ESPER_REMOTE_WRITE_URL", "store:9090"),
        ("ESPER_NODE", "a: b"),
        ("ESPER_NODE", "node#1"),
        ("ESPER_NODE", "x" * 64),
    ],
)
def test_the_agent_entrypoint_refuses_a_bad_variable_naming_it(
    variable: str, value: str, tmp_path: Path
) -> None:
    import os
    import subprocess

    marker = tmp_path / "prometheus-ran"
    fake = tmp_path / "prometheus"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    env = {**os.environ, "ESPER_REMOTE_WRITE_URL": "http://store:9090/api/v1/write",
           "ESPER_NODE": "node-1", "ESPER_AGENT_CONFIG": str(AGENT / "agent.yml"),
           "ESPER_AGENT_DATA": str(tmp_path / "data"), "PROMETHEUS": str(fake),
           "TMPDIR": str(tmp_path), variable: value}  # fmt: skip
    done = subprocess.run(["sh", str(AGENT / "agent-entrypoint.sh")], env=env,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert not marker.exists(), "prometheus was not started"
    env[variable] = "http://store:9090/api/v1/write" if "URL" in variable else "node-1"
    fine = subprocess.run(["sh", str(AGENT / "agent-entrypoint.sh")], env=env,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert fine.returncode == 0, fine.stderr
    assert marker.exists()
