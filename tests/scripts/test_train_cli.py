"""``esper train``: every flag parsed and validated; telemetry flags wired to the hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from esper.leyline import TelemetryEventType, TelemetryLevel
from esper.nissa import InMemoryOutput, NissaHub, read_events
from esper.runs.session import RunSession
from esper.scripts import cli
from esper.scripts.train import (
    backend_spec,
    build_parser,
    main,
    parse_args,
    telemetry_config,
)


def test_parser_accepts_every_contract_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esper.scripts import train

    monkeypatch.setattr(train, "has_terminal", lambda: True)  # --sanctum needs one
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    args = parse_args(
        [
            "ppo", "--task", "cifar10", "--data-dir", str(tmp_path), "--device", "cuda:1",
            "--seed", "7", "--episodes", "3", "--max-epochs", "12", "--n-envs", "2",
            "--vectorized", "--lr", "0.001", "--clip-ratio", "0.1", "--entropy-coef", "0.02",
            "--param-budget", "1000", "--save", str(tmp_path / "out.pt"), "--resume", str(ckpt),
            "--telemetry-file", str(tmp_path / "e.jsonl"), "--telemetry-dir", str(tmp_path),
            "--telemetry-level", "debug", "--telemetry-lifecycle-only", "--metrics-addr",
            "0.0.0.0", "--metrics-port", "0", "--otlp-endpoint", "http://127.0.0.1:4318",
            "--inject-fault", "nan-loss@4", "--inject-fault", "exploding-gradients@2",
            "--sanctum", "--metrics-detail", "rank",
        ]
    )  # fmt: skip
    assert (args.mode, args.task, args.device, args.seed, args.episodes) == (
        "ppo", "cifar10", "cuda:1", 7, 3,
    )  # fmt: skip
    assert [str(f) for f in args.inject_fault] == ["nan-loss@4", "exploding-gradients@2"]
    assert args.metrics_port == 0
    assert backend_spec(args, "run-1").metrics_detail == "rank"
    assert backend_spec(args, "run-1").series_estimate.detail == "rank"  # type: ignore[union-attr]
    assert args.sanctum
    assert args.telemetry_lifecycle_only


def test_lifecycle_only_parses_for_heuristic_and_defaults_are_safe() -> None:
    args = build_parser().parse_args(["heuristic", "--telemetry-lifecycle-only"])
    assert args.telemetry_lifecycle_only is True
    assert args.metrics_addr == "127.0.0.1"  # never 0.0.0.0 unless asked
    assert args.telemetry_level == "normal"
    config = telemetry_config(parse_args(["heuristic", "--telemetry-level", "off",
                                          "--telemetry-lifecycle-only"]))  # fmt: skip
    assert config.level is TelemetryLevel.OFF
    assert config.lifecycle
    assert not config.analytics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ppo", "--lr", "-1"], "argument --lr: must be > 0.0"),
        (["ppo", "--lr", "nan"], "argument --lr: must be > 0.0"),
        (["ppo", "--max-epochs", "0"], "argument --max-epochs: must be >= 1"),
        (["ppo", "--n-envs", "x"], "argument --n-envs: expected an integer, got 'x'"),
        (["ppo", "--device", "gpu"], "argument --device: expected cpu, cuda, cuda:N or mps"),
        (["ppo", "--device", "cuda:0,gpu"], "argument --device: expected cpu, cuda, cuda:N"),
        (["ppo", "--counterfactual", "never"], "argument --counterfactual: invalid choice"),
        (["ppo", "--inject-fault", "bogus@3"], "--inject-fault: unknown fault kind 'bogus'"),
        (["ppo", "--inject-fault", "nan-loss@x"], "--inject-fault: EPOCH must be an integer"),
        (["ppo", "--inject-fault", "nan-loss"], "argument --inject-fault: expected KIND@EPOCH"),
        (["ppo", "--max-epochs", "5", "--inject-fault", "nan-loss@9"], "after --max-epochs 5"),
        (["ppo", "--metrics-port", "70000"], "argument --metrics-port: must be in 0..65535"),
        (["ppo", "--otlp-endpoint", "ftp://x"], "argument --otlp-endpoint: expected an http://"),
        (["ppo", "--telemetry-level", "loud"], "argument --telemetry-level: invalid choice"),
        (["ppo", "--resume", "/no/such.pt"], "argument --resume: no such file: /no/such.pt"),
        (["ppo", "--task", "cifar10"], "--task cifar10 needs --data-dir"),
        (["ppo", "--metrics-addr", "bad host!"], "argument --metrics-addr: not an IP address"),
        (["dqn"], "argument mode: invalid choice: 'dqn'"),
        (["ppo", "--metrics-detail", "slot"], "argument --metrics-detail: invalid choice"),
        (["ppo", "--metrics-detail", "rank"], "--metrics-detail need --metrics-port"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _open(argv: list[str], hub: NissaHub) -> RunSession:
    """The session ``esper train`` opens for these flags (its telemetry-off warning too)."""
    args = parse_args(argv)
    session = RunSession(backend_spec(args, "run-1"), run_id="run-1", hub=hub)
    session.warn_if_telemetry_is_off(telemetry_config(args))
    return session


def test_telemetry_dir_prints_where_it_goes_and_receives_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = NissaHub()
    setup = _open(["heuristic", "--telemetry-dir", str(tmp_path)], hub).setup
    (run_dir,) = tmp_path.iterdir()
    assert f"Telemetry will be saved to: {run_dir}" in capsys.readouterr().out
    assert setup.destinations == [f"run directory: {run_dir}"]
    hub.close()
    assert (run_dir / "events.jsonl").exists()


def test_level_off_emits_one_warning_and_nothing_else() -> None:
    hub = NissaHub()
    out = InMemoryOutput()
    hub.add_backend(out)
    _open(["ppo", "--telemetry-level", "off"], hub)
    hub.close()
    assert [(e.event_type, e.data["reason"]) for e in out.events] == [
        (TelemetryEventType.TELEMETRY_WARNING, "telemetry_disabled")
    ]


def test_an_unwritable_telemetry_dir_is_reported_before_training(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["heuristic", "--telemetry-dir", "/proc/esper"]) == 2
    assert "--telemetry-dir /proc/esper: cannot write in" in capsys.readouterr().err


def test_telemetry_file_flag_writes_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "e.jsonl"
    hub = NissaHub()
    _open(["ppo", "--telemetry-file", str(path), "--telemetry-level", "off"], hub)
    hub.close()
    assert [e.data["reason"] for e in read_events(path, strict=True).events] == [
        "telemetry_disabled"
    ]


@pytest.mark.slow
def test_module_and_console_entry_points_share_the_parser() -> None:
    module = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "--help"], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert "--telemetry-lifecycle-only" in module.stdout
    assert module.stdout.startswith("usage: esper train")


def test_esper_command_rejects_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_the_command_line_only_parses_and_prints() -> None:
    """The run lives in esper.runs: the command line hands it a TrainRequest. Orchestration
    (threads, the training call, the process group, the verdict) must not creep back."""
    import ast

    from esper.scripts import train

    tree = ast.parse(Path(train.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import)
                for a in n.names}  # fmt: skip
    assert imported.isdisjoint(
        {"threading", "traceback", "signal", "run_training", "RunSession", "attach_backends"}
    )
    called = {n.func.attr for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}  # fmt: skip
    assert called.isdisjoint({"start", "close", "all_ok", "agree", "join_run"})
    assert not hasattr(train, "setup_telemetry")
