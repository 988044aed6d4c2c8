"""A recording made before a change reads the same after it: the summary, the replay and the
backfilled samples of ``tests/data/compat_run`` (a real debug-level run with a NaN loss, 129
events, recorded at the commit that added this test) are compared with the outputs committed
beside it. A change that alters them on purpose regenerates them (``ESPER_UPDATE_COMPAT=1``)
and says why in its commit."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from esper.nissa import read_events
from esper.nissa.prometheus.backfill import backfill_runs, write_openmetrics
from esper.scripts import telemetry

DATA = Path(__file__).resolve().parent / "data"
RUN = DATA / "compat_run"
GOLDEN = DATA / "compat"


def _golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("ESPER_UPDATE_COMPAT"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


def test_the_summary_of_the_recording_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)  # the summary prints the path it was given
    out = io.StringIO()
    with redirect_stdout(out):
        assert telemetry.main(["summarize", "compat_run"]) == 0
    assert out.getvalue() == _golden("summarize.txt", out.getvalue())


def test_the_replay_of_the_recording_is_the_recording(tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    assert telemetry.main(["replay", str(RUN), "--telemetry-file", str(copy)]) == 0
    assert read_events(copy).events == read_events(RUN).events


def test_the_backfilled_samples_of_the_recording_are_unchanged() -> None:
    out = io.StringIO()
    samples = write_openmetrics(backfill_runs(read_events(RUN).events), out)
    assert samples > 1000
    assert out.getvalue() == _golden("backfill.om", out.getvalue())


def test_the_backfilled_text_is_the_same_under_any_hash_seed(tmp_path: Path) -> None:
    """Found by the golden above: series were written in set order, which string hashing
    makes differ from process to process."""
    import subprocess
    import sys

    code = (
        "import sys; from esper.nissa import read_events; "
        "from esper.nissa.prometheus.backfill import backfill_runs, write_openmetrics; "
        f"events = read_events({str(RUN)!r}).events; "
        "write_openmetrics(backfill_runs(events), sys.stdout)"
    )
    texts = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120).stdout
        for seed in ("1", "2")
    ]  # fmt: skip
    assert texts[0] == texts[1]
    assert texts[0].endswith("# EOF\n")
