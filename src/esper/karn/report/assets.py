"""The charting library the report embeds: uPlot, installed by the project's set-up.

uPlot (MIT, about 50 KB) comes from npm, pinned in ``js/package.json`` and its lock file, and
``./dev setup`` installs it (``npm ci --prefix js``). Nothing of it is copied into the
repository; each report carries the whole library inline, so the file opens with no network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

UPLOT_VERSION = "1.6.32"
UPLOT_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
UPLOT_ENV = "ESPER_UPLOT_DIR"
"""A folder holding uPlot's ``dist`` files (and, one level up, its package.json)."""

CHECKOUT_DIST = Path(__file__).resolve().parents[4] / "js" / "node_modules" / "uplot" / "dist"
"""Where ``./dev setup`` installs uPlot in a checkout of the repository."""

STATIC = Path(__file__).resolve().parent / "static"
"""The report's own script and style (the project's code)."""


class AssetError(RuntimeError):
    """The charting library is not installed where the report looks for it."""


def _version(dist: Path) -> str | None:
    try:
        return str(json.loads((dist.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def uplot_dist() -> Path:
    """The folder holding uPlot's files, at the pinned version (AssetError names where it
    looked and how to install it)."""
    override = os.environ.get(UPLOT_ENV)
    candidates = [Path(override)] if override else [CHECKOUT_DIST]
    for dist in candidates:
        if all((dist / f).is_file() for f in UPLOT_FILES):
            version = _version(dist)
            if version is not None and version != UPLOT_VERSION:
                raise AssetError(
                    f"{dist}: uPlot {version} is installed, the report needs {UPLOT_VERSION} "
                    "(./dev setup installs it: npm ci --prefix js)"
                )
            return dist
    where = ", ".join(str(d) for d in candidates)
    raise AssetError(
        f"uPlot {UPLOT_VERSION} is not installed (looked in {where}): run ./dev setup "
        f"(npm ci --prefix js), or set {UPLOT_ENV} to a folder holding {' and '.join(UPLOT_FILES)}"
    )


def read_assets() -> dict[str, str]:
    """uPlot's script and style, and the report's own, as text."""
    dist = uplot_dist()
    return {
        "uplot_js": (dist / UPLOT_FILES[0]).read_text(encoding="utf-8"),
        "uplot_css": (dist / UPLOT_FILES[1]).read_text(encoding="utf-8"),
        "report_js": (STATIC / "report.js").read_text(encoding="utf-8"),
        "report_css": (STATIC / "report.css").read_text(encoding="utf-8"),
    }
