"""``esper telemetry``: summarise and replay recorded runs; ``esper docs --check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import DirectoryOutput, read_events
from esper.scripts import cli


def _record(base: Path, n: int) -> Path:
    out = DirectoryOutput(base)
    for i in range(n):
        out.emit(TelemetryEvent(TelemetryEventType.TELEMETRY_WARNING, epoch=i,
                                data={"reason": "events_dropped", "detail": f"#{i}"}))  # fmt: skip
    out.close()
    return out.output_dir


def test_summarize_counts_events_and_names_a_corrupt_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _record(tmp_path / "runs", 4)
    with (run / "events.jsonl").open("a") as fh:
        fh.write("garbage\n")
    assert cli.main(["telemetry", "summarize", str(run)]) == 0
    captured = capsys.readouterr()
    assert "4 events" in captured.out
    assert "TELEMETRY_WARNING" in captured.out
    assert f"{run / 'events.jsonl'}:5: corrupt line" in captured.err
    assert cli.main(["telemetry", "summarize", "--strict", str(run)]) == 1


def test_replay_copies_a_run_exactly(tmp_path: Path) -> None:
    run = _record(tmp_path / "runs", 30)
    assert (
        cli.main(["telemetry", "replay", str(run), "--telemetry-dir", str(tmp_path / "copy")]) == 0
    )
    original = read_events(run, strict=True).events
    copied = read_events(tmp_path / "copy", strict=True).events
    assert copied == original


def test_docs_check_passes_on_the_checked_in_docs() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert cli.main(["docs", "--check", "--out", str(docs)]) == 0


@pytest.mark.parametrize("strict", [[], ["--strict"]], ids=["lenient", "strict"])
def test_replaying_events_that_break_the_catalogue_exits_3_and_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], strict: list[str]
) -> None:
    """They are copied (the record is what it is) and the verdict says they do not match:
    the replay used to exit 0 over them, even with --strict."""
    from esper.leyline import example_payload

    out = DirectoryOutput(tmp_path / "runs")
    data = example_payload(TelemetryEventType.GOVERNOR_ROLLBACK, reason="not-a-reason")
    out.emit(TelemetryEvent(TelemetryEventType.GOVERNOR_ROLLBACK, data=data))
    out.close()
    argv = ["telemetry", "replay", str(out.output_dir), *strict, "--telemetry-dir",
            str(tmp_path / "copy")]  # fmt: skip
    assert cli.main(argv) == 3
    captured = capsys.readouterr().out
    assert "PAYLOAD MISMATCH: 1 events did not match the payload catalogue" in captured
    assert "'reason' is 'not-a-reason'" in captured
