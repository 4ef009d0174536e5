"""The chat service: conversations with personas on the tiny model, saved as they happen."""

import threading

import pytest

from core.chat import ChatService
from core.engine import GenerationSettings
from core.errors import AdapterIncompatible, ChorusError
from core.starter import seed_starters
from storage.store import Store


@pytest.fixture
def chat(tiny_engine, chorus_home):
    store = Store()
    seed_starters(store)
    return ChatService(store, tiny_engine)


def settings(seed=3, n=12):
    return GenerationSettings(temperature=0.8, max_new_tokens=n, seed=seed)


def drain(events):
    events = list(events)
    assert events[-1].kind == "done"
    return events


def test_greeting_opens_a_conversation(chat):
    conv = chat.start_conversation("captain-mara")
    path = chat.store.conversations.path(conv["id"])
    assert len(path) == 1 and path[0]["role"] == "assistant"
    assert path[0]["content"].startswith("Arr, a fresh hand on deck!")
    assert path[0]["persona_name"] == "Captain Mara"


def test_send_streams_and_saves_both_sides(chat):
    conv = chat.start_conversation("juniper")
    events = drain(chat.send(conv["id"], "juniper", "Hello!", settings()))
    deltas = [e.text for e in events if e.kind == "delta"]
    assert len(deltas) > 1
    saved = events[-1].message
    assert saved["content"] == "".join(deltas).strip()
    path = chat.store.conversations.path(conv["id"])
    assert [m["role"] for m in path] == ["assistant", "user", "assistant"]
    assert path[-1]["persona_id"] == "juniper" and path[-1]["meta"]["settings"]["seed"] == 3
    assert path[-1]["meta"]["stopped"] is False  # a reply that ran to its end was not stopped


def test_switching_persona_mid_conversation(chat, tiny_adapters):
    chat.attach_adapter("byte", tiny_adapters["a"])
    conv = chat.start_conversation("juniper")
    drain(chat.send(conv["id"], "juniper", "Hello!", settings()))
    reply = drain(chat.send(conv["id"], "byte", "And you?", settings()))[-1].message
    assert reply["persona_id"] == "byte" and reply["persona_name"] == "Byte"
    assert reply["meta"]["adapter_sha256"] == chat.store.current_adapter(chat.store.personas.get("byte"))["sha256"]
    names = [m["persona_name"] for m in chat.store.conversations.path(conv["id"]) if m["role"] == "assistant"]
    assert names == ["Juniper", "Juniper", "Byte"]


def test_regenerate_keeps_the_old_reply_as_a_sibling(chat):
    conv = chat.start_conversation("byte")
    first = drain(chat.send(conv["id"], "byte", "Hi", settings(seed=1)))[-1].message
    second = drain(chat.regenerate(conv["id"], "byte", settings(seed=2)))[-1].message
    assert first["parent_id"] == second["parent_id"]
    last = chat.store.conversations.path(conv["id"])[-1]
    assert last["id"] == second["id"] and last["sibling_count"] == 2
    chat.store.conversations.select(first["id"])
    assert chat.store.conversations.path(conv["id"])[-1]["content"] == first["content"]


def test_greeting_cannot_be_regenerated(chat):
    conv = chat.start_conversation("byte")
    with pytest.raises(ChorusError, match="greeting"):
        chat.regenerate(conv["id"], "byte", settings())


def test_stop_and_abandoned_streams_keep_the_partial_reply(chat):
    conv = chat.start_conversation("byte")
    stop = threading.Event()
    stream = chat.send(conv["id"], "byte", "Talk a lot", GenerationSettings(temperature=1, max_new_tokens=500, seed=1), stop)
    got = []
    for event in stream:
        if event.kind == "delta":
            got.append(event.text)
            stop.set()
    saved = chat.store.conversations.path(conv["id"])[-1]
    assert saved["role"] == "assistant" and saved["content"] == "".join(got).strip()
    assert saved["meta"]["stopped"] is True
    # a consumer that simply goes away (closed browser tab)
    stream = chat.send(conv["id"], "byte", "Again", GenerationSettings(temperature=1, max_new_tokens=500, seed=2))
    for event in stream:
        if event.kind == "delta":
            break
    stream.close()
    assert chat.store.conversations.path(conv["id"])[-1]["role"] == "assistant"


def test_incompatible_adapter_touches_nothing_saved(chat, tiny_adapters, tmp_path):
    chat.attach_adapter("byte", tiny_adapters["a"])
    before = chat.store.personas.get("byte")["adapter_id"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["nope"]}')
    (bad / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterIncompatible):
        chat.attach_adapter("byte", bad)
    assert chat.store.personas.get("byte")["adapter_id"] == before
    assert len(chat.store.adapters.versions("byte")) == 1


def test_corrupt_adapter_falls_back_to_the_card_with_a_warning(chat, tiny_adapters, tiny_engine):
    row = chat.attach_adapter("byte", tiny_adapters["a"])
    tiny_engine.forget("byte")
    weights = chat.store.adapters.folder(row) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    conv = chat.start_conversation("byte")
    events = drain(chat.send(conv["id"], "byte", "Hi", settings()))
    assert events[0].kind == "warning" and "checksum" in events[0].text
    assert events[-1].message["meta"]["adapter_sha256"] is None
    assert "warning" in events[-1].message["meta"]
