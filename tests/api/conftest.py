"""API-test fixtures: `python app.py serve` (or the page with the API) as a subprocess on a
free port with its own CHORUS_HOME and the tiny model; four personas carry their own
random adapter. stdout and stderr are kept apart, so a test can check stdout stays empty."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTED = ("juniper", "byte", "captain-mara", "detective-vale")  # personas given an adapter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python app.py [serve] ...` run; `start()` waits until it answers and the model is loaded."""

    def __init__(self, home: Path, model: Path, args: list[str]):
        self.home, self.model, self.args = home, model, args
        self.port = free_port()
        stamp = f"{self.port}-{time.monotonic_ns()}"
        self.err_path = home.parent / f"{home.name}-{stamp}.err"
        self.out_path = home.parent / f"{home.name}-{stamp}.out"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def start(self, timeout: float = 120) -> "Server":
        env = {**os.environ, "CHORUS_HOME": str(self.home), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
               "HF_HUB_OFFLINE": "1"}
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "app.py", *self.args, "--model", str(self.model), "--port", str(self.port)],
                                     cwd=ROOT, env=env, stdout=self._out, stderr=self._err)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited early:\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if "Model ready" in self.stderr():
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"app.py did not come up in {timeout} s:\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for fh in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if fh:
                fh.close()

    def client(self, api_key: str = "not-needed-on-localhost", **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def adapted_home(tmp_path_factory, tiny_adapters, tiny_model_dir):
    """A CHORUS_HOME with the starter personas; four of them have an adapter of their own."""
    from core.adapters import inspect_adapter
    from core.starter import seed_starters
    from core.synthetic import make_random_adapter
    from storage.store import Store

    home = tmp_path_factory.mktemp("chorus-api-home")
    store = Store(home)
    seed_starters(store)
    folders = [tiny_adapters["a"], tiny_adapters["b"], tiny_adapters["c"]]
    folders.append(make_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter-d") / "d", seed=4, rank=4))
    for persona, folder in zip(ADAPTED, folders):
        store.adapters.add_version(persona, folder, inspect_adapter(folder).store_meta())
    return home


@pytest.fixture(scope="module")
def server_factory(tiny_model_dir):
    started: list[Server] = []

    def make(home: Path, *args: str) -> Server:
        server = Server(home, tiny_model_dir, list(args))
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
