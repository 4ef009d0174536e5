"""Who may call the API, and how it is served: keys on a real server (none, wrong, right,
from a file), the refusal to listen beyond this machine without a key, the page and the
API on one server, and a 503 in OpenAI's error JSON while the model loads."""

from __future__ import annotations

import socket
import subprocess
import sys
import types

import httpx
import openai
import pytest

from api.auth import ApiKeys
from tests.api.conftest import ROOT, free_port

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def keyed(server_factory, adapted_home, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# one key a line\nfile-key-2\n\n")
    return server_factory(adapted_home, "serve", "--api-key", "secret-key-1", "--api-key-file", str(key_file))


def test_a_key_is_required_when_one_is_given(keyed):
    r = httpx.get(f"{keyed.base_url}/models", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="wrong-key").models.list()
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="wrong-key").chat.completions.create(model="juniper", messages=HI, max_tokens=2)
    for key in ("secret-key-1", "file-key-2"):
        reply = keyed.client(api_key=key).chat.completions.create(model="juniper", messages=HI, max_tokens=2)
        assert reply.choices[0].message.content is not None
    assert "secret-key-1" not in keyed.stderr() + keyed.stdout() and "file-key-2" not in keyed.stderr()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serving_beyond_this_machine_needs_a_key(tmp_path, tiny_model_dir):
    port = free_port()
    result = subprocess.run([sys.executable, "app.py", "serve", "--host", "0.0.0.0", "--port", str(port), "--model", str(tiny_model_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "CHORUS_HOME": str(tmp_path)})
    assert result.returncode == 2 and result.stdout == ""
    assert "--api-key" in result.stderr and "Traceback" not in result.stderr
    assert not _listening(port)


def test_key_rules():
    assert ApiKeys([], loopback=True).check(None) is None  # this machine, no key given: open
    off = ApiKeys([], loopback=False).check("Bearer anything")
    assert off and "--api-key" in off  # beyond this machine with no key: the API is off
    keys = ApiKeys(["k1", "k2"], loopback=True)
    assert keys.check("Bearer k2") is None and keys.check("bearer k1") is None
    assert keys.check("Bearer k3") and keys.check(None) and keys.check("Basic k1") and keys.check("Bearer ")


def test_page_and_api_on_one_server_each_with_its_own_guard(server_factory, adapted_home):
    """`python app.py` beyond this machine: the page wants its login, the API its key."""
    both = server_factory(adapted_home, "--host", "0.0.0.0", "--auth", "ann:page-pass", "--api-key", "api-key-3")
    base = f"http://127.0.0.1:{both.port}"
    assert httpx.get(f"{base}/config", timeout=30).status_code == 401  # the page: login first
    assert httpx.get(f"{base}/", timeout=30).status_code == 200  # the page's shell (its login form) is served at /
    assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401  # a page login is not an API key
    ids = [m.id for m in both.client(api_key="api-key-3").models.list().data]
    assert "juniper" in ids and "tiny-llama" in ids
    assert both.stdout() == ""
    err = both.stderr()
    assert "a login is required (1 user)" in err and "/v1; an API key is required (1 key)" in err
    assert "api-key-3" not in err and "page-pass" not in err


def test_loading_model_is_a_503_in_openai_json():
    from fastapi.testclient import TestClient

    from api.app import create_app
    from core.runtime import ModelLoading

    class Loading:
        started = 0.0

        @property
        def chat(self):
            raise ModelLoading("The model is still loading (Loading tiny-llama...).")

    client = TestClient(create_app(Loading(), ApiKeys([], loopback=True)))
    r = client.post("/v1/chat/completions", json={"model": "juniper", "messages": HI})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_loading" and "still loading" in r.json()["error"]["message"]
    assert client.get("/v1/models").status_code == 503
    # Bad parameters are said first: they do not depend on the model.
    r = client.post("/v1/chat/completions", json={"model": "juniper", "messages": HI, "n": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
