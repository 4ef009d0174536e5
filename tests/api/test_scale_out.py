"""Issue 15: a local Chorus whose engine is another Chorus's `serve` (a real subprocess,
sharing a temporary adapter folder with it), against the local engine on the same tiny
model. Greedy replies must be the same tokens; adapters are published into the shared
folder only, registered at run time, unloaded least recently used first, and replaced
when a persona is trained again, without a restart."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from core.chat import ChatService
from core.chat_template import encode_text, render
from core.engine import GenerationSettings
from core.engine.remote import RemoteEngine
from core.errors import ChorusError
from core.group_chat import GroupChatService
from core.model_source import ModelSource
from storage.adapter_files import CONFIG, META, WEIGHTS, sha256_file

NEW_TOKENS = 12


def greedy(**kw) -> GenerationSettings:
    return GenerationSettings(temperature=0, max_new_tokens=NEW_TOKENS, seed=3, **kw)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("published-adapters")


@pytest.fixture(scope="module")
def engine_server(server_factory, tmp_path_factory, shared_dir):
    return server_factory(tmp_path_factory.mktemp("server-home"), "serve", "--allow-adapter-loading", str(shared_dir))


@pytest.fixture(scope="module")
def desktop(adapted_home, engine_server, shared_dir, tiny_model_dir):
    """The local Chorus, its engine remote; two adapters at most on the server for it."""
    from core.runtime import Runtime, RuntimeOptions

    runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir), max_resident_adapters=2, engine_url=engine_server.base_url,
                                     engine_adapter_dir=str(shared_dir)), home=adapted_home)
    runtime.load()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def local_chat(desktop, tiny_engine_factory):
    """The local NF4 engine on the same store: the reference every remote reply must equal."""
    return ChatService(desktop.store, tiny_engine_factory())


def local_reply(local_chat, conversation_id: str, message: dict, settings: GenerationSettings) -> str:
    """What the local engine answers at `message`'s place in the conversation."""
    path = local_chat.store.conversations.path(conversation_id)
    upto = path[:[m["id"] for m in path].index(message["id"])]
    persona = local_chat.store.personas.get(message["persona_id"])
    prompt, adapter, warning = local_chat.prepare(persona, upto, settings)
    assert warning is None
    return local_chat.engine.generate(prompt.input_ids, adapter, settings).strip()


def replies(store, conversation_id: str) -> list[dict]:
    return [m for m in store.conversations.path(conversation_id) if m["role"] == "assistant" and not m["meta"].get("greeting")]


def served_adapters(server) -> list[str]:
    data = httpx.get(f"{server.base_url}/models", timeout=30).json()["data"]
    return [m["id"] for m in data if m.get("parent")]


def test_connects_to_the_server_and_says_so(desktop, engine_server, shared_dir):
    status = desktop.chat.engine.status()
    assert status["backend"] == "remote" and status["server"] == engine_server.base_url
    assert status["served_model"] == "tiny-llama" and status["server_kind"] == "Chorus"
    assert status["adapter_mode"] == "runtime" and status["adapter_dir"] == str(shared_dir.resolve())
    assert "served by Chorus at" in desktop.progress[-1]
    from ui.status import status_html

    line = status_html(desktop)
    assert f"remote engine: Chorus at {engine_server.base_url}, base tiny-llama" in line and "adapters on the server" in line


def test_greedy_replies_equal_the_local_engine_token_for_token(desktop, local_chat):
    remote, local = desktop.chat.engine, local_chat.engine
    tok = local.tokenizer
    ids = encode_text(tok, render(tok, [{"role": "user", "content": "Tell me about the sea."}], generation_prompt=True))
    for persona in ("juniper", "byte", None):
        ref = desktop.chat.adapter_ref(desktop.store.personas.get(persona)) if persona else None
        here, there = {}, {}
        mine = local.generate(ids, ref, greedy(), result=here)
        theirs = remote.generate(ids, ref, greedy(), result=there)
        assert tok(theirs, add_special_tokens=False)["input_ids"] == tok(mine, add_special_tokens=False)["input_ids"]
        assert there["tokens"] == here["tokens"] and there["prompt_tokens"] == len(ids)
    # A persona's adapter changes what it says: the equality above is not the base model's.
    assert remote.generate(ids, desktop.chat.adapter_ref(desktop.store.personas.get("juniper")), greedy()) != \
        remote.generate(ids, None, greedy())


def test_a_persona_switch_mid_conversation(desktop, local_chat):
    chat = desktop.chat
    conv = chat.start_conversation("juniper")["id"]
    for persona, text in (("juniper", "Good morning!"), ("byte", "And you, what do you think?"),
                          ("professor-quill", "Professor?"), ("juniper", "Back to you.")):
        events = list(chat.send(conv, persona, text, greedy()))
        assert events[-1].kind == "done" and not [e for e in events if e.kind == "warning"]
    done = replies(desktop.store, conv)
    assert [m["persona_id"] for m in done] == ["juniper", "byte", "professor-quill", "juniper"]
    for message in done:
        assert message["content"] == local_reply(local_chat, conv, message, greedy())


@pytest.mark.parametrize("mode", ["turn", "together"])
def test_a_group_chat(desktop, local_chat, engine_server, mode):
    groups = GroupChatService(desktop.store, desktop.chat)
    members = ["captain-mara", "byte", "detective-vale"]
    conv = groups.start_group(members, mode=mode)["id"]
    events = list(groups.send(conv, "Hello, all of you!", greedy()))
    assert not [e for e in events if e.kind in ("error", "warning")]
    done = replies(desktop.store, conv)
    assert [m["persona_id"] for m in done] == members
    for message in done:
        # In turn, each answers the conversation so far; together, each the user's message alone.
        expected = message if mode == "turn" else {**message, "id": done[0]["id"]}
        assert message["content"] == local_reply(local_chat, conv, expected, greedy())
    assert len(served_adapters(engine_server)) <= 3  # two slots; a third only while all three replies stream


def test_fewer_server_slots_than_personas_unloads_the_least_recently_used(desktop, engine_server):
    chat = desktop.chat
    conv = chat.start_conversation()["id"]
    for persona in ("juniper", "byte", "captain-mara", "detective-vale"):
        list(chat.send(conv, persona, "Hi", greedy()))
        held = served_adapters(engine_server)
        assert len(held) <= 2 and len(chat.engine.resident()) <= 2
    assert chat.engine.resident() == ["captain-mara", "detective-vale"]
    assert sorted(h.rsplit("-", 1)[0] for h in held) == ["captain-mara", "detective-vale"]


def test_a_persona_trained_locally_is_served_remotely_without_a_restart(desktop, local_chat, engine_server, shared_dir,
                                                                      tiny_model_dir, tmp_path):
    from core.synthetic import make_random_adapter

    store = desktop.store
    list(desktop.chat.send(desktop.chat.start_conversation()["id"], "juniper", "Hi", greedy()))
    old = store.current_adapter(store.personas.get("juniper"))
    assert (shared_dir / f"juniper-{old['sha256'][:12]}").is_dir()
    # What a finished training run leaves: a new adapter version, its run marked finished.
    folder = make_random_adapter(tiny_model_dir, tmp_path / "trained", seed=9, rank=4)
    from core.adapters import inspect_adapter

    run = store.training.create(speaker="Juniper", export_name="chat.txt", config={}, persona_id="juniper")
    row = store.adapters.add_version("juniper", folder, inspect_adapter(folder).store_meta())
    store.training.update(run["id"], status="finished", adapter_id=row["id"])
    assert [r["id"] for r in desktop.training.poll()] == [run["id"]]
    new = f"juniper-{row['sha256'][:12]}"
    assert (shared_dir / new).is_dir() and not (shared_dir / f"juniper-{old['sha256'][:12]}").exists()
    assert new in served_adapters(engine_server)
    conv = desktop.chat.start_conversation()["id"]
    list(desktop.chat.send(conv, "juniper", "Who are you now?", greedy()))
    message = replies(store, conv)[-1]
    assert message["meta"]["adapter_sha256"] == row["sha256"]
    assert message["content"] == local_reply(local_chat, conv, message, greedy())


def test_a_deleted_persona_is_unpublished(desktop, engine_server, shared_dir):
    list(desktop.chat.send(desktop.chat.start_conversation()["id"], "detective-vale", "Hi", greedy()))
    assert [p for p in os.listdir(shared_dir) if p.startswith("detective-vale-")]
    desktop.chat.delete_persona("detective-vale")
    assert not [p for p in os.listdir(shared_dir) if p.startswith("detective-vale-")]
    assert not [n for n in served_adapters(engine_server) if n.startswith("detective-vale-")]


def test_nothing_is_published_outside_the_adapter_folder(desktop, shared_dir, adapted_home):
    names = sorted(os.listdir(shared_dir))
    assert names and all(re.fullmatch(r"[a-z-]+-[0-9a-f]{12}", n) for n in names)  # no temp folders left
    for name in names:
        folder = shared_dir / name
        assert sorted(os.listdir(folder)) == sorted([CONFIG, WEIGHTS, META])
        assert json.loads((folder / CONFIG).read_text())["base_model_name_or_path"] == "tiny-llama"
        assert sha256_file(folder / WEIGHTS)[:12] == name.rsplit("-", 1)[1]
    # The store's own adapter files are untouched: each still has its recorded checksum.
    for persona in desktop.store.personas.list():
        row = desktop.store.current_adapter(persona)
        if row:
            assert sha256_file(desktop.store.adapters.folder(row) / WEIGHTS) == row["sha256"]


def test_a_wrong_base_model_is_a_clear_error_naming_both(engine_server, other_tiny_model_dir, tiny_model_dir):
    from core.runtime import Runtime, RuntimeOptions

    with pytest.raises(ChorusError) as err:
        RemoteEngine.connect(engine_server.base_url, ModelSource("tiny-llama-b", other_tiny_model_dir))
    assert "tiny-llama-b" in str(err.value) and "serves tiny-llama," in str(err.value)
    runtime = Runtime(RuntimeOptions(model=str(other_tiny_model_dir), engine_url=engine_server.base_url))
    with pytest.raises(ChorusError, match="tiny-llama-b"):
        runtime.load()
    assert "tiny-llama-b" in str(runtime.error)


def test_the_servers_adapter_endpoints_stay_inside_their_folder(engine_server, shared_dir, adapted_home, tmp_path,
                                                             tiny_adapters):
    import shutil

    url = engine_server.base_url
    outside = tiny_adapters["a"]
    r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "sneaky", "lora_path": str(outside)}, timeout=30)
    assert r.status_code == 400 and "inside" in r.json()["error"]["message"]
    link = shared_dir / "link-to-outside"
    link.symlink_to(outside, target_is_directory=True)
    try:
        r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "sneaky", "lora_path": str(link)}, timeout=30)
        assert r.status_code == 400 and "inside" in r.json()["error"]["message"]
    finally:
        link.unlink()
    pickled = shared_dir / "pickled"
    pickled.mkdir()
    try:
        shutil.copyfile(outside / CONFIG, pickled / CONFIG)
        (pickled / "adapter_model.bin").write_bytes(b"not loaded")
        r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "pickled", "lora_path": str(pickled)}, timeout=30)
        assert r.status_code == 400 and "pickle" in r.json()["error"]["message"]
    finally:
        shutil.rmtree(pickled)
    # A folder inside: loaded by name, answered with, unloaded.
    inside = shared_dir / "by-hand"
    shutil.copytree(outside, inside)
    try:
        r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "by-hand", "lora_path": str(inside)}, timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{url}/completions", json={"model": "by-hand", "prompt": "Ahoy", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "by-hand"
        assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "by-hand"}, timeout=30).status_code == 200
        assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "by-hand"}, timeout=30).status_code == 404
    finally:
        shutil.rmtree(inside)


def test_the_resolver_loads_a_published_folder_on_demand(engine_server, shared_dir, tiny_model_dir, desktop, local_chat):
    """A server without runtime loading (vLLM's filesystem resolver): the adapter is found
    by its name in the shared folder on first use."""
    remote = RemoteEngine.connect(engine_server.base_url, ModelSource("tiny-llama", tiny_model_dir),
                                  adapter_dir=shared_dir, adapter_mode="resolver")
    ref = desktop.chat.adapter_ref(desktop.store.personas.get("captain-mara"))
    name = f"captain-mara-{ref.sha256[:12]}"
    httpx.post(f"{engine_server.base_url}/unload_lora_adapter", json={"lora_name": name}, timeout=30)  # 404 if not loaded
    assert name not in served_adapters(engine_server)
    ids = local_chat.engine.tokenizer("Once upon a time")["input_ids"]
    assert remote.generate(ids, ref, greedy()) == local_chat.engine.generate(ids, ref, greedy())
    assert name in served_adapters(engine_server)  # found in the folder by its name
    assert remote.status()["adapter_mode"] == "resolver" and remote.resident() == ["captain-mara"]


def test_another_tokenizer_under_the_right_name_is_caught(engine_server, tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    fake = tmp_path / "tiny-llama"  # the right name, another tokenizer
    fake.mkdir()
    shutil.copyfile(tiny_model_dir / "config.json", fake / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.add_tokens(["Chorus probe:", "naïve café"])
    tokenizer.save_pretrained(str(fake))
    with pytest.raises(ChorusError, match="tokenizer reads a probe text") as err:
        RemoteEngine.connect(engine_server.base_url, ModelSource("tiny-llama", fake))
    assert "serves 'tiny-llama'" in str(err.value)
