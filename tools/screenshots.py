"""``./dev screenshots``: regenerate the README's picture, ``docs/report.png``, from the report of
a real ``./dev train`` run (its flags, into a temporary directory), drawn by headless Chromium
offline. Also saves every section's screenshot beside the run, for looking at."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _browser  # noqa: E402

PICTURE = ROOT / "docs" / "report.png"
WIDTH, HEIGHT = 1400, 1250


def main() -> int:
    why = _browser.available()
    if why is not None:
        print(f"screenshots: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="esper-screenshots-") as name:
        tmp = Path(name)
        train = subprocess.run([str(ROOT / "dev"), "train", "--telemetry-dir", str(tmp / "runs")],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if train.returncode != 0:
            print(train.stdout[-2000:], train.stderr[-2000:], file=sys.stderr)
            return train.returncode
        (run_dir,) = (tmp / "runs").iterdir()
        page = run_dir / "report.html"
        with _browser.offline_chromium(WIDTH, HEIGHT) as driver:
            drawn = _browser.open_report(driver, page)
            errors = _browser.console_errors(driver) + list(drawn["errors"])
            if errors:
                print(f"screenshots: the page reported errors: {errors}", file=sys.stderr)
                return 1
            driver.save_screenshot(str(PICTURE))
            shots = _browser.screenshot_sections(driver, ROOT / "build" / "screenshots")
    print(f"{PICTURE.relative_to(ROOT)}: the top of {page.name} of a real ./dev train run")
    print(f"every section: {', '.join(str(s.relative_to(ROOT)) for s in shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
