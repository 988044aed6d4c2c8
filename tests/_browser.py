"""Debian's headless Chromium, driven by Selenium, with the network off: what the report's
tests (and ``./dev screenshots``) look at a page with.

Selenium is pointed at the system's chromium and chromedriver by path, so it never tries to
download a driver. The network is off twice over: Chromium resolves no host name, and the
DevTools protocol puts the page offline. The performance log records every request the page
makes, so a test can show that none left it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """Why no browser can run here (None: it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (./dev setup)"
    return None if shutil.which(CHROMIUM) else f"{CHROMIUM} is not executable"


@contextmanager
def offline_chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (Selenium WebDriver) that can reach no network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        offline = {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
        yield driver
    finally:
        driver.quit()


def requests_made(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(str(message["params"]["request"]["url"]))
    return urls


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at level SEVERE since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def open_report(driver: Any, path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Load a report from ``file://`` and wait until its script says it has drawn; returns
    what it drew (``window.esperReport``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return window.esperReport && window.esperReport.ready")
    )
    drawn: dict[str, Any] = driver.execute_script("return window.esperReport")
    return drawn


def screenshot_sections(driver: Any, out_dir: Path) -> list[Path]:
    """A PNG of each ``<section>`` of the page (the window grows to hold the tallest)."""
    from selenium.webdriver.common.by import By

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    for section in driver.find_elements(By.CSS_SELECTOR, "main section"):
        name = section.get_attribute("id")
        path = out_dir / f"section-{name}.png"
        driver.execute_script("arguments[0].scrollIntoView()", section)
        section.screenshot(str(path))
        shots.append(path)
    return shots
