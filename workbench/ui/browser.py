"""Drive the real dashboard in headless Chromium: serve it, open each page, time the first paint, screenshot it.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and the
``selenium`` package. Used by ``tests/test_browser.py`` and ``bench/app.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Chromium flags for a closed network: no background connections, no sandbox (root in containers), fresh profile.
_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000",
]


class BrowserUnavailable(RuntimeError):
    """Chromium, ChromeDriver or selenium is missing."""


def browser_missing() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (Path(exe).is_file() or shutil.which(Path(exe).name)):
            return f"{exe} not found (install Debian's chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    return None


def page_names(app_dir: Path = APP_DIR) -> list[str]:
    """URL paths of the dashboard's pages: ``""`` for Home, then ``pages/N_Name.py`` -> ``"Name"``, in order."""
    names = [""]
    for file in sorted((app_dir / "pages").glob("*.py")):
        stem = file.stem
        names.append(stem.split("_", 1)[1] if stem[0].isdigit() and "_" in stem else stem)
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, deadline: float) -> None:
    """Poll the Streamlit server at ``url`` until its health check answers ``ok``; RuntimeError when ``proc`` exits
    first (with its output, when piped) or ``time.monotonic()`` passes ``deadline``."""
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"the dashboard server exited with {proc.returncode}:\n{out[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not answer on {url} by its deadline")
        time.sleep(0.2)


@contextlib.contextmanager
def serve(env: dict[str, str] | None = None, app_dir: Path = APP_DIR, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app_dir/Home.py`` with Streamlit on a free loopback port; yields its base URL."""
    with serve_process(env, app_dir, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def serve_process(env: dict[str, str] | None = None, app_dir: Path = APP_DIR, timeout: float = 60.0
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """As :func:`serve`, yielding ``(base URL, server process)`` (benchmarks read the server's CPU time)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_dir / "Home.py"), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer"]
    full_env = dict(os.environ, **(env or {}), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        wait_healthy(url, proc, deadline)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def chromium():
    """A headless Chromium WebDriver (selenium) with flags for a closed network."""
    reason = browser_missing()
    if reason:
        raise BrowserUnavailable(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in _FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@dataclass
class PageVisit:
    """What a browser saw on one page: time to first paint of content, errors shown, text, and a screenshot."""

    name: str
    url: str
    first_paint_s: float
    settled_s: float
    errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    text: str = ""
    screenshot: bytes = b""

    @property
    def blank(self) -> bool:
        """True when the main area shows no text at all."""
        return not self.text.strip()


_JS_STATE = """
const main = document.querySelector('[data-testid="stMain"]') || document.querySelector('section.main');
const text = main ? main.innerText : '';
const running = !!document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]');
const skeleton = !!document.querySelector('[data-testid="stAppSkeleton"], [data-testid="stSkeleton"]');
const heading = main ? main.querySelector('h1, h2, h3') : null;
const errors = [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText);
const exceptions = [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText);
return {text: text, running: running, skeleton: skeleton, heading: heading ? heading.innerText : '',
        errors: errors, exceptions: exceptions, now: performance.now()};
"""


def visit(driver, base_url: str, name: str, timeout: float = 60.0, settle: float = 1.0) -> PageVisit:
    """Open page ``name`` ("" for Home); time the first paint (first heading shown) and wait until the script ends.

    ``first_paint_s``: navigation start to the first heading in the main area, in the browser's own clock.
    ``settled_s``: to the moment the page stopped running and its content did not change for ``settle`` s.
    """
    url = f"{base_url}/{name}"
    driver.get(url)
    start = time.monotonic()
    first_paint = None
    last_text, stable_since, stable_at = None, None, 0.0
    state: dict = {}
    while time.monotonic() - start < timeout:
        state = driver.execute_script(_JS_STATE)
        if first_paint is None and state["heading"]:
            first_paint = state["now"] / 1000.0
        idle = not state["running"] and not state["skeleton"] and state["heading"]
        if idle and state["text"] == last_text:
            if stable_since is None:
                stable_since, stable_at = time.monotonic(), state["now"]
            elif time.monotonic() - stable_since >= settle:
                break
        else:
            stable_since = None
        last_text = state["text"]
        time.sleep(0.1)
    settled = (stable_at or state.get("now", 0.0)) / 1000.0
    return PageVisit(
        name=name or "Home", url=url, first_paint_s=first_paint if first_paint is not None else float("inf"),
        settled_s=settled, errors=list(state.get("errors", [])), exceptions=list(state.get("exceptions", [])),
        text=state.get("text", ""), screenshot=driver.get_screenshot_as_png(),
    )
