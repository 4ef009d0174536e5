"""Browser-test fixtures: `python app.py` as a subprocess on a free port with its own
CHORUS_HOME and the tiny model, and headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """One `python app.py` run; `start()` waits until the page answers and the model is loaded."""

    def __init__(self, home: Path, model: Path):
        self.home, self.model = home, model
        self.port = free_port()
        # One log per run (a restart on the same home gets a new one), so waiting for
        # "Model ready" never reads an earlier run's line.
        self.log_path = home.parent / f"{home.name}-app-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, wait_model: bool = True, timeout: float = 120) -> "AppProcess":
        env = {**os.environ, "CHORUS_HOME": str(self.home), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self._fh = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(self.model), "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if not wait_model or "Model ready" in self.log():
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"app.py did not come up in {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_fh", None):
            self._fh.close()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); browser tests need it")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_factory(tiny_model_dir, tmp_path_factory):
    """Start app processes; all are stopped when the module ends."""
    started: list[AppProcess] = []

    def make(home: Path | None = None, wait_model: bool = True) -> AppProcess:
        home = home or tmp_path_factory.mktemp("chorus-ui-home")
        app = AppProcess(home, tiny_model_dir)
        started.append(app)
        return app.start(wait_model=wait_model)

    yield make
    for app in started:
        app.stop()


@pytest.fixture(scope="module")
def app(app_factory) -> AppProcess:
    """One app shared by a test module (startup costs seconds)."""
    return app_factory()


@pytest.fixture
def chat_page(browser, app):
    from tests.ui.pages import ChatPage

    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = ChatPage(context.new_page(), app.url).open()
    yield page
    context.close()
