"""Getting a model (issue 13): a hub id fetched through huggingface-hub from a fake hub on
127.0.0.1 (only the files a load needs, progress on the terminal and for the page, a dropped
connection resumed, an interrupted run finished without fetching again what it had), the
offline message, and local .gguf files converted once into $CHORUS_HOME/models/<name>/."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import core.model_source as model_source
from core.errors import ModelUnavailable
from core.model_source import resolve_model

REPO = "chorus-test/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Siblings a real repo carries that a load never needs: pickles, ONNX, GGUF, original checkpoints,
# Mistral's consolidated copy of the weights, a README.
DECOYS = {
    "pytorch_model.bin": b"pickle" * 100,
    "model.onnx": b"onnx" * 100,
    "onnx/model.onnx": b"onnx" * 100,
    "tiny-chat-Q4_K_M.gguf": b"GGUF" * 100,
    "original/consolidated.00.pth": b"pth" * 100,
    "consolidated.safetensors": b"weights again" * 100,
    "training_args.pt": b"pt" * 10,
    "README.md": b"# tiny chat\n",
}


class FakeHub:
    """The few hub endpoints snapshot_download calls: repo info, the file tree, HEAD and GET
    of /resolve/ (with Range). `cut` maps a file to how many GETs of it to break: a positive
    number drops the connection half way through, `"fail"` answers 503."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str, str | None]] = []  # (method, file or api path, Range header)
        self.cut: dict[str, int] = {}
        self.fail: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{REPO}/revision/"):
                    hub.requests.append((self.command, "api:info", None))
                    return self._json({"id": REPO, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": f} for f in hub.files]})
                if path.startswith(f"/api/models/{REPO}/tree/"):
                    hub.requests.append((self.command, "api:tree", None))
                    return self._json([{"type": "file", "path": f, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for f, b in hub.files.items()])
                prefix = f"/{REPO}/resolve/"
                if not path.startswith(prefix):
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                name = path[len(prefix):].split("/", 1)[1]
                if name not in hub.files:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                rng = self.headers.get("Range")
                hub.requests.append((self.command, name, rng))
                body = hub.files[name]
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(body).hexdigest()}"', "Accept-Ranges": "bytes"}
                if self.command == "HEAD":
                    return self._send(200, body, headers)
                if name in hub.fail:
                    return self._send(503, b"busy", {"Connection": "close"})
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                part = body[start:]
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                if hub.cut.get(name, 0) > 0:  # the connection drops half way through this body
                    hub.cut[name] -= 1
                    self.send_response(206 if start else 200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(part)))
                    self.end_headers()
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(206 if start else 200, part, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, name: str) -> list[str | None]:
        """The Range header of each GET of `name`."""
        return [rng for method, f, rng in self.requests if method == "GET" and f == name]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache of this test's own (the hub reads its cache path at import)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def fake_hub(tiny_model_dir, hub_cache, monkeypatch):
    files = {p.name: p.read_bytes() for p in sorted(Path(tiny_model_dir).iterdir()) if p.is_file()}
    hub = FakeHub({**files, **DECOYS})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.server.shutdown()


def _needed(tiny_model_dir) -> set[str]:
    return {p.name for p in Path(tiny_model_dir).iterdir() if p.is_file()}


def test_a_hub_id_fetches_only_what_a_load_needs_with_progress(fake_hub, tiny_model_dir, chorus_home, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # the hub draws its bar even though stderr is not a terminal here
    notes, page = [], []
    source = resolve_model(REPO, chorus_home, notes.append, download_report=page.append)
    assert source.name == REPO
    got = {p.name for p in source.path.iterdir()}
    assert got == _needed(tiny_model_dir), got
    for name in _needed(tiny_model_dir):
        assert (source.path / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    fetched = {f for m, f, _ in fake_hub.requests if m == "GET" and not f.startswith("api:")}
    asked = {f for _, f, _ in fake_hub.requests}
    assert fetched == _needed(tiny_model_dir) and not asked & set(DECOYS)  # no decoy even asked about
    assert any("Downloading chorus-test/tiny-chat from the Hugging Face hub" in n for n in notes)
    total = sum(len(b) for f, b in fake_hub.files.items() if f in _needed(tiny_model_dir))
    assert page and page[-1] == f"Downloading {REPO}: {total / 1e6:.1f} of {total / 1e6:.1f} MB (100%)", page[-3:]
    assert "Downloading bytes" in capsys.readouterr().err  # the hub's own bar, on stderr

    # A second start finds it in the cache and does not touch the network.
    fake_hub.requests.clear()
    again = resolve_model(REPO, chorus_home, lambda m: pytest.fail(f"downloaded again: {m}"))
    assert again.path == source.path and fake_hub.requests == []


def test_the_pages_loading_message_follows_the_download(fake_hub, chorus_home, capsys):
    """The runtime's last note is the page's loading message: the byte counts reach it,
    while stderr (the terminal) gets the steps and the hub's own bar, not a line per count."""
    from core.runtime import Runtime, RuntimeOptions

    runtime = Runtime(RuntimeOptions(model=REPO), chorus_home)
    runtime.load()
    downloads = [n for n in runtime.progress if n.startswith(f"Downloading {REPO}:")]
    assert downloads and downloads[-1].endswith("(100%)")
    assert runtime.chat.engine.info.name == REPO
    err = capsys.readouterr().err
    assert "Preparing the model..." in err and f"Downloading {REPO}:" not in err


def test_the_downloaded_files_load(fake_hub, chorus_home):
    from core.loader import load_base

    model, tokenizer, info = load_base(resolve_model(REPO, chorus_home, lambda m: None))
    assert info.name == REPO and info.quantization.startswith("NF4")
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_a_dropped_connection_resumes_with_a_range_request(tiny_model_dir, hub_cache, chorus_home, monkeypatch):
    """The hub writes in 10 MB chunks (DOWNLOAD_CHUNK_SIZE): a 24 MB shard cut after 12 MB is
    asked again from the end of what was written, not from its start."""
    import os

    from huggingface_hub import constants

    shard = os.urandom(24 * 2**20)
    hub = FakeHub({"config.json": (tiny_model_dir / "config.json").read_bytes(), "model.safetensors": shard})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.cut["model.safetensors"] = 1
    try:
        source = resolve_model(REPO, chorus_home, lambda m: None)
    finally:
        hub.server.shutdown()
    first, again = hub.gets("model.safetensors")
    assert first is None and again == f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"  # the rest, not all of it again
    assert (source.path / "model.safetensors").read_bytes() == shard


def test_an_interrupted_download_finishes_without_fetching_again_what_it_had(fake_hub, tiny_model_dir, chorus_home):
    fake_hub.fail.add("model.safetensors")
    with pytest.raises(ModelUnavailable) as err:
        resolve_model(REPO, chorus_home, lambda m: None)
    assert REPO in str(err.value) and "Traceback" not in str(err.value)
    first = {f for m, f, _ in fake_hub.requests if m == "GET" and not f.startswith("api:")}
    assert "config.json" in first

    fake_hub.fail.clear()
    fake_hub.requests.clear()
    source = resolve_model(REPO, chorus_home, lambda m: None)
    again = {f for m, f, _ in fake_hub.requests if m == "GET" and not f.startswith("api:")}
    assert again == {"model.safetensors"} | (_needed(tiny_model_dir) - first)  # only what was missing
    assert {p.name for p in source.path.iterdir()} == _needed(tiny_model_dir)


def test_a_model_too_large_for_this_machine_is_refused_before_its_weights_come(hub_cache, chorus_home, monkeypatch):
    import core.memory_fit as memory_fit
    from core.errors import ModelTooLarge

    qwen7b = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
              "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
              "max_position_embeddings": 32768, "tie_word_embeddings": False}
    hub = FakeHub({"config.json": json.dumps(qwen7b).encode(), "model-00001-of-00004.safetensors": b"w" * 1000})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: (4 * 10**9, "RAM available (of 8.0 GB)"))
    try:
        with pytest.raises(ModelTooLarge, match=r"'chorus-test/tiny-chat' needs about 7\.\d+ GB"):
            resolve_model(REPO, chorus_home, lambda m: None)
        assert hub.gets("config.json") == [None] and hub.gets("model-00001-of-00004.safetensors") == []
    finally:
        hub.server.shutdown()


def test_without_a_network_it_names_the_model_and_how_to_get_it(hub_cache, chorus_home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("Qwen/Qwen2.5-1.5B-Instruct", chorus_home, lambda m: None)
    text = str(err.value)
    assert "'Qwen/Qwen2.5-1.5B-Instruct' is not in the local Hugging Face cache" in text
    assert "hf download Qwen/Qwen2.5-1.5B-Instruct --include '*.safetensors'" in text
    assert "--model /path/to/folder" in text


def test_a_repo_without_safetensors_is_refused(hub_cache, chorus_home, monkeypatch):
    hub = FakeHub({"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with pytest.raises(ModelUnavailable, match="never loads .bin pickles"):
            resolve_model(REPO, chorus_home, lambda m: None)
        assert hub.gets("pytorch_model.bin") == []
    finally:
        hub.server.shutdown()


# local .gguf files ----------------------------------------------------------------------------


def test_a_local_gguf_is_converted_once_into_chorus_home(tiny_model_dir, chorus_home, tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf, dest, progress):  # the real conversion is the embedded model's (conftest)
        calls.append((gguf, dest))
        progress(f"[1/4] Reading {gguf.name}")
        shutil.copytree(tiny_model_dir, dest)
        (dest / "chorus_model.json").write_text(json.dumps({"source": gguf.name, "source_bytes": gguf.stat().st_size}))
        return dest

    monkeypatch.setattr(model_source, "convert_gguf", fake_convert)
    gguf = tmp_path / "dl" / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    notes = []
    source = resolve_model(str(gguf), chorus_home, notes.append)
    assert source.path == chorus_home / "models" / "Qwen2.5-0.5B-Instruct-Q4_K_M" and source.name == source.path.name
    assert any("Converting Qwen2.5-0.5B-Instruct-Q4_K_M.gguf" in n for n in notes)
    assert resolve_model(str(gguf), chorus_home, lambda m: pytest.fail(m)).path == source.path  # reused
    assert len(calls) == 1

    other = tmp_path / "elsewhere" / gguf.name  # another file of the same name: its own folder
    other.parent.mkdir()
    other.write_bytes(b"GGUF" + b"\1" * 200)
    second = resolve_model(str(other), chorus_home, lambda m: None)
    assert second.path != source.path and second.path.parent == chorus_home / "models" and len(calls) == 2


def test_an_unreadable_gguf_is_one_clear_message_and_leaves_nothing(chorus_home, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelUnavailable) as err:
        resolve_model(str(bad), chorus_home, lambda m: None)
    assert "Could not read the GGUF" in str(err.value) and str(bad) in str(err.value)
    models = chorus_home / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no half-written folder
