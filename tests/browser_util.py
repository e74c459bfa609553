"""A real headless Chromium (Debian's chromium + chromium-driver, via Selenium) and a real dashboard server.

The browser tests fail, never skip, when Chromium is missing: the project installs it
(scripts/install_system_packages.sh), so its absence is a broken setup, not an option.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1400,1000",
)


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver) executables, or a loud failure naming the fix."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(
            "headless Chromium is required for the browser tests: apt-get install chromium chromium-driver "
            "(scripts/install_system_packages.sh does it)"
        )
    return browser, driver


@contextmanager
def chrome() -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with the browser console log readable; always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """SEVERE entries of the browser console (JS errors, failed loads) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def dashboard_server(runs_dir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tinytwin dashboard RUNS_DIR --port 0`` in its own process; yields (url, process); always stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", "dashboard", str(runs_dir), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("dashboard: http"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"dashboard did not start: {line!r} {err}")
        yield line.split()[1], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def start_cli(*args: str) -> subprocess.Popen:
    """A ``tinytwin`` command in the background (the caller waits for or stops it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
