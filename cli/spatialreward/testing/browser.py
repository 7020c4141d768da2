"""A headless Chromium driven by Selenium, for the report's browser test, its
benchmark and the README screenshot script.

Uses the system's Chromium and chromedriver (Debian: ``apt-get install
chromium chromium-driver``; CI's ``.ci/run`` installs them) and Selenium
(``pip install selenium``; in the ``test`` extra). Nothing is downloaded:
Selenium Manager is bypassed by naming the driver's path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def _first(paths, env: str) -> str | None:
    override = os.environ.get(env)
    if override:
        return override if Path(override).is_file() else None
    return next((p for p in paths if Path(p).is_file()), None)


def find_browser() -> tuple[str | None, str | None, str | None]:
    """(chromium path, chromedriver path, problem): problem is None when both
    binaries and the selenium package are there, else what is missing.
    ``SPATIALREWARD_CHROMIUM`` / ``SPATIALREWARD_CHROMEDRIVER`` override the paths."""
    chromium = _first(CHROMIUM_CANDIDATES, "SPATIALREWARD_CHROMIUM")
    driver = _first(CHROMEDRIVER_CANDIDATES, "SPATIALREWARD_CHROMEDRIVER")
    missing = []
    if chromium is None:
        missing.append("chromium (" + " or ".join(CHROMIUM_CANDIDATES) + ")")
    if driver is None:
        missing.append("chromedriver (" + " or ".join(CHROMEDRIVER_CANDIDATES) + ")")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install selenium)")
    problem = ("missing " + ", ".join(missing) + "; on Debian: apt-get install chromium chromium-driver") if missing else None
    return chromium, driver, problem


class HeadlessChromium:
    """A context manager giving a Selenium WebDriver on a headless Chromium
    with a fresh profile folder (removed afterwards)."""

    def __init__(self, *, width: int = 1440, height: int = 1000, profile_dir: str | os.PathLike | None = None,
                 log_console: bool = True) -> None:
        chromium, driver, problem = find_browser()
        if problem:
            raise RuntimeError(problem)
        self.chromium, self.driver_path = chromium, driver
        self.size = (width, height)
        self._own_profile = profile_dir is None
        self.profile_dir = Path(profile_dir) if profile_dir else Path(tempfile.mkdtemp(prefix="sr-chromium-"))
        self.log_console = log_console
        self.driver = None

    def __enter__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile_dir}")
        options.add_argument(f"--window-size={self.size[0]},{self.size[1]}")
        options.binary_location = self.chromium
        if self.log_console:
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(self.driver_path), options=options)
        return self.driver

    def __exit__(self, *exc) -> None:
        try:
            if self.driver is not None:
                self.driver.quit()
        finally:
            if self._own_profile:
                shutil.rmtree(self.profile_dir, ignore_errors=True)


def wait_until_ready(driver, timeout: float = 30.0) -> float:
    """Wait for the report page's first render; return its ``performance.now()``
    at that moment (ms since navigation start)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.01).until(
        lambda d: d.execute_script("return !!(window.__report && window.__report.ready)"))
    return float(driver.execute_script("return window.__report.ready"))
