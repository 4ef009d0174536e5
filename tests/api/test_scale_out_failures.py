"""Issue 15, when the engine server is not there: a dead server at start is one clear
error (no traceback); a server that dies mid-reply leaves the partial reply saved and
marked, the error says the server is unreachable, and the next message tries again."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from core.engine import GenerationSettings
from core.errors import ChorusError
from tests.api.conftest import ROOT, Server, free_port


def test_a_dead_server_at_start_is_one_clear_error(tiny_model_dir, tmp_path):
    from core.runtime import Runtime, RuntimeOptions

    url = f"http://127.0.0.1:{free_port()}/v1"
    runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir), engine_url=url))
    with pytest.raises(ChorusError, match="No engine server answers at"):
        runtime.load()
    result = subprocess.run([sys.executable, "app.py", "chat", "juniper", "Hi", "--model", str(tiny_model_dir), "--engine", url,
                             "--engine-api-key", "do-not-print-me"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CHORUS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert f"No engine server answers at {url}" in result.stderr and "Traceback" not in result.stderr
    assert "do-not-print-me" not in result.stderr


def test_a_server_that_dies_mid_reply(tiny_model_dir, tmp_path_factory):
    from core.runtime import Runtime, RuntimeOptions

    server_home = tmp_path_factory.mktemp("dying-server")
    server = Server(server_home, tiny_model_dir, ["serve"]).start()
    try:
        # Without --allow-adapter-loading a Chorus server has no adapter endpoints, as vLLM without its variable.
        r = httpx.post(f"{server.base_url}/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, timeout=30)
        assert r.status_code == 404
        runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir), engine_url=server.base_url),
                          home=tmp_path_factory.mktemp("desktop"))
        chat = runtime.load()
        assert chat.engine.status()["adapter_mode"] == "resolver"
        conv = chat.start_conversation("professor-quill")["id"]
        long = GenerationSettings(temperature=0.8, max_new_tokens=1200, min_new_tokens=1200, seed=5)
        written = []
        with pytest.raises(ChorusError) as err:
            for event in chat.send(conv, "professor-quill", "Tell me everything.", long):
                if event.kind == "delta":
                    written.append(event.text)
                    if server.proc.poll() is None:
                        server.proc.kill()  # mid-reply, without a goodbye
        assert "unreachable" in str(err.value) and "Traceback" not in str(err.value)
        assert written
        kept = runtime.store.conversations.path(conv)[-1]
        assert kept["role"] == "assistant" and kept["content"] and "unreachable" in kept["meta"]["error"]
        assert kept["content"] == "".join(written).strip()
        from ui.render import message_html

        assert "Cut short: The engine server at" in message_html(kept, {})  # the page marks it

        # The next message tries again: while the server is down it says so, once back it answers.
        with pytest.raises(ChorusError, match="unreachable"):
            list(chat.send(conv, "professor-quill", "Still there?", GenerationSettings(max_new_tokens=4, seed=1)))
        server.stop()
        again = Server(server_home, tiny_model_dir, ["serve"])
        again.port = server.port
        again.start()
        try:
            events = list(chat.send(conv, "professor-quill", "And now?", GenerationSettings(max_new_tokens=4, seed=1)))
            assert events[-1].kind == "done" and events[-1].text
        finally:
            again.stop()
    finally:
        server.stop()
