"""Helpers for the end-to-end browser test: a real Streamlit server and headless Chromium.

The server is ``python -m streamlit run app.py`` in a subprocess on a free loopback port, with
every artifact location (data dir, ratings DB, evaluation results, feature cache) pointed at a
temporary folder. The browser is Debian's ``/usr/bin/chromium`` driven by Playwright's sync API
(Playwright's own browser download does not work on these machines; ``.ci/run`` installs the
Debian package). Every wait here is bounded, and the server is always stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# The flags the machine probe launched Chromium with: without the background-networking ones,
# Chromium keeps trying Google's hosts, which this closed network refuses. Playwright itself
# starts every browser with a new, empty profile (its own temporary --user-data-dir).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SERVER_START_TIMEOUT_S = 90.0  # until /_stcore/health answers "ok"
SERVER_STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL of the whole process group
SCREENSHOT_PATH = REPO_ROOT / "docs" / "screenshot-search.png"


def in_ci() -> bool:
    """True on the CI runner (``CI=true``), where a missing browser is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def update_screenshot() -> bool:
    """True when ``UPDATE_SCREENSHOT=1``: the test then rewrites ``docs/screenshot-search.png``."""
    return os.environ.get("UPDATE_SCREENSHOT", "").strip() == "1"


def require_chromium() -> Path:
    """The Chromium binary; skip (locally) or fail (in CI) with a clear reason when missing."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = (
        f"{CHROMIUM} not found: install Debian's chromium "
        "(apt-get install -y --no-install-recommends chromium), as .ci/run does"
    )
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- test data ----------------------------------------------------------------------------------


def build_small_index(data_dir: Path, photos: list[Path], name: str = "test") -> Path:
    """An untrained 32-bit head over EfficientNet-Lite0 and a bundle of ``photos``.

    Built with ``tests/builders.py``; the bundle lands in
    ``<data_dir>/indexes/<name>``, where the app looks for indexes.
    """
    from retrieval.search import build_index
    from tests import builders

    model_dir = builders.untrained_model_dir(data_dir / "models" / "h32")
    index_dir = data_dir / "indexes" / name
    report = build_index(model_dir, photos, index_dir, progress=False)
    assert report.added == len(photos), report
    return index_dir


def build_demo_index(env: dict[str, str]) -> Path:
    """The real demo (collection, trained 64-bit model, index) in a child process under ``env``.

    A child process, because the demo's locations come from the environment variables that
    this test points at its temporary folder. About half a minute on two CPUs.
    """
    code = "from retrieval.quickstart import ensure_demo; print(ensure_demo().index_dir)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"building the demo failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1])


def app_env(root: Path) -> dict[str, str]:
    """This process's environment with every artifact location under ``root``."""
    env = dict(os.environ)
    env.update(
        RETRIEVAL_DATA_DIR=str(root / "data"),
        RETRIEVAL_RATINGS_DB=str(root / "ratings.db"),
        RETRIEVAL_RESULTS=str(root / "results.jsonl"),
        RETRIEVAL_CACHE_DIR=str(root / "cache"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


# --- the server ---------------------------------------------------------------------------------


@dataclass
class AppServer:
    """A running ``streamlit run app.py``: its address, environment and captured output."""

    url: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def ratings_db(self) -> Path:
        return Path(self.env["RETRIEVAL_RATINGS_DB"])

    def output(self, tail: int = 8000) -> str:
        """The last ``tail`` characters the server printed (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server output)"
        return text[-tail:]


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group; SIGKILL it if it has not exited in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)


@contextlib.contextmanager
def run_app(env: dict[str, str], log_path: Path, script: str = "app.py") -> Iterator[AppServer]:
    """Start ``streamlit run <script>`` on a free port, wait until healthy, always stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped together with children
        )
    server = AppServer(url, env, log_path, process)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _health_ok(url):
            if process.poll() is not None:
                pytest.fail(
                    f"streamlit exited with code {process.returncode} before answering "
                    f"{url}/_stcore/health; its output:\n{server.output()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"streamlit did not answer {url}/_stcore/health within "
                    f"{SERVER_START_TIMEOUT_S:.0f} s; its output:\n{server.output()}",
                    pytrace=False,
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


# --- the browser --------------------------------------------------------------------------------


@contextlib.contextmanager
def launch_chromium() -> Iterator[object]:
    """Playwright's sync API driving Debian's Chromium headless; yields the Browser."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable),
            headless=True,
            args=list(CHROMIUM_ARGS),
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()
