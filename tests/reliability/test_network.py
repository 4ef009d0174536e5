"""The bind rules, as a user meets them: `python app.py` stays on 127.0.0.1; any other
address needs a login (--auth or --auth-file), said at start; without one it refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(*args, home, timeout=60):
    env = {**os.environ, "CHORUS_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "extra,words",
    [
        ([], "--auth-file PATH"),
        (["--auth", "nopassword"], "USER:PASS"),
        (["--auth-file", "/nonexistent/logins.txt"], "cannot be read"),
        (["--auth-file", "EMPTY"], "holds no user:pass"),
        (["--auth-file", "BAD"], "Line 2"),
    ],
)
def test_other_addresses_refuse_to_start_without_a_login(extra, words, chorus_home, tmp_path):
    (tmp_path / "EMPTY").write_text("# nobody yet\n\n")
    (tmp_path / "BAD").write_text("ann:secret\njustaname\n")
    extra = [str(tmp_path / a) if a in ("EMPTY", "BAD") else a for a in extra]
    result = run_app("--host", "0.0.0.0", "--port", str(free_port()), *extra, home=chorus_home)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) with a socket listening on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


class Started:
    def __init__(self, args, home, log):
        env = {**os.environ, "CHORUS_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=self.fh, stderr=subprocess.STDOUT)

    def wait_port(self, port, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"no listener on {port}:\n{self.log.read_text()}")

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)
        self.fh.close()


def test_default_listens_on_loopback_only_and_says_so(chorus_home, tiny_model_dir, tmp_path):
    port = free_port()
    app = Started(["--model", str(tiny_model_dir), "--port", str(port)], chorus_home, tmp_path / "app.log")
    try:
        app.wait_port(port)
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, and nothing else
        assert f"listening on http://127.0.0.1:{port}/ (this machine only" in app.log.read_text()
    finally:
        app.stop()


def test_any_address_with_an_auth_file_requires_the_login(chorus_home, tiny_model_dir, tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may come in\nann:correct-horse\nbob:battery-staple\n")
    port = free_port()
    app = Started(["--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", str(port), "--auth-file", str(logins)],
                  chorus_home, tmp_path / "app.log")
    try:
        app.wait_port(port)
        assert f"listening on http://0.0.0.0:{port}/; a login is required (2 users)" in app.log.read_text()
        base = f"http://127.0.0.1:{port}"
        for path in ("/config", "/gradio_api/info"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=10)
            assert info.value.code == 401, path

        def login(user, password):
            data = urllib.parse.urlencode({"username": user, "password": password}).encode()
            return urllib.request.urlopen(urllib.request.Request(base + "/login", data=data), timeout=10)

        with pytest.raises(urllib.error.HTTPError):
            login("ann", "wrong")
        cookie = login("bob", "battery-staple").headers.get_all("set-cookie")
        assert cookie
        req = urllib.request.Request(base + "/config", headers={"Cookie": "; ".join(c.split(";")[0] for c in cookie)})
        assert urllib.request.urlopen(req, timeout=10).status == 200
    finally:
        app.stop()
