"""Personas changing under a live chat, through ChatService: an adapter replaced while it
answers, a persona deleted while another session talks to it, hostile adapters refused
while the previous one keeps serving, and a damaged adapter file falling back to the card."""

from __future__ import annotations

import threading

import pytest

from core.engine import GenerationSettings
from core.errors import AdapterIncompatible, NotFound
from tests.test_engine import CASES, _variant


def settings(seed=5, n=6):
    return GenerationSettings(temperature=0.9, max_new_tokens=n, seed=seed)


def long_settings(seed=5):
    # long enough that another thread acts while it streams; min_new_tokens: no early EOS
    return GenerationSettings(temperature=0.9, max_new_tokens=120, min_new_tokens=120, seed=seed)


def reply(chat, pid, text="Hi there.", s=None, conv=None):
    conv = conv or chat.start_conversation(pid)["id"]
    events = list(chat.send(conv, pid, text, s or settings()))
    return events[-1].message, events


def test_adapter_replaced_while_it_answers(chat8, eight_adapters):
    chat = chat8
    old_sha = chat.store.current_adapter(chat.store.personas.get("voice-0"))["sha256"]
    solo_old = reply(chat, "voice-0", s=long_settings())[0]["content"]
    stream = chat.send(chat.start_conversation("voice-0")["id"], "voice-0", "Hi there.", long_settings())
    pieces, attached = [], {}
    for event in stream:
        if event.kind == "delta":
            pieces.append(event.text)
            if len(pieces) == 1:
                # another session attaches a new version; it waits for the reply in flight
                t = threading.Thread(target=lambda: attached.update(row=chat.attach_adapter("voice-0", eight_adapters[7])))
                t.start()
        elif event.kind == "done":
            in_flight = event.message
    t.join(60)
    assert in_flight["content"] == solo_old and in_flight["meta"]["adapter_sha256"] == old_sha
    new = attached["row"]
    assert new["version"] == 2 and new["sha256"] != old_sha
    after, _ = reply(chat, "voice-0", s=long_settings())
    assert after["meta"]["adapter_sha256"] == new["sha256"]
    assert after["content"] != solo_old  # the new version's voice, from the next reply on
    assert reply(chat, "voice-0", s=long_settings())[0]["content"] == after["content"]


def test_persona_deleted_while_another_session_chats(chat8):
    chat = chat8
    solo_doomed = reply(chat, "voice-1", s=long_settings())[0]["content"]
    solo_other = reply(chat, "voice-2", s=long_settings(seed=9))[0]["content"]
    conv = chat.start_conversation("voice-1")["id"]
    other: dict = {}
    other_thread = threading.Thread(
        target=lambda: other.update(msg=reply(chat, "voice-2", s=long_settings(seed=9))[0]))
    deleter = None
    pieces = []
    for event in chat.send(conv, "voice-1", "Hi there.", long_settings()):
        if event.kind == "delta":
            pieces.append(event.text)
            if len(pieces) == 1:
                other_thread.start()
                deleter = threading.Thread(target=chat.delete_persona, args=("voice-1",))
                deleter.start()
        elif event.kind == "done":
            saved = event.message
    deleter.join(60)
    other_thread.join(60)
    # the reply in flight finished and is saved, labelled with the deleted persona's name
    assert saved["content"] == solo_doomed
    assert (saved["persona_id"], saved["persona_name"]) == ("voice-1", "Voice 1")
    assert chat.store.conversations.path(conv)[-1]["id"] == saved["id"]
    # the other session was unaffected
    assert other["msg"]["content"] == solo_other and other["msg"]["persona_name"] == "Voice 2"
    # later sends: a clear NotFound, and nothing half-written
    before = len(chat.store.conversations.all_messages(conv))
    with pytest.raises(NotFound, match="no persona"):
        chat.send(conv, "voice-1", "Are you there?", settings())
    with pytest.raises(NotFound, match="no persona"):
        chat.regenerate(conv, "voice-1", settings())
    assert len(chat.store.conversations.all_messages(conv)) == before
    assert "voice-1" not in chat.engine.resident()
    assert not (chat.store.adapters.root / "voice-1").exists()


def test_persona_deleted_after_the_reply_was_prepared(chat8):
    """Deleted between send() and the first token: a clear NotFound, no empty reply saved."""
    chat = chat8
    conv = chat.start_conversation("voice-3")["id"]
    stream = chat.send(conv, "voice-3", "Hi there.", settings())
    chat.delete_persona("voice-3")
    with pytest.raises(NotFound, match="deleted"):
        list(stream)
    roles = [m["role"] for m in chat.store.conversations.all_messages(conv)]
    assert roles == ["assistant", "user"]  # the greeting and what the user wrote; no empty reply


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_adapter_leaves_the_previous_one_serving(case, chat8, eight_adapters, tmp_path):
    chat = chat8
    persona = chat.store.personas.get("voice-4")
    before_row = chat.store.current_adapter(persona)
    first = reply(chat, "voice-4")[0]
    kwargs, message = CASES[case]
    bad = _variant(eight_adapters[5], tmp_path / "bad", **kwargs)
    if case == "pickle":
        (bad / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AdapterIncompatible, match=message):
        chat.attach_adapter("voice-4", bad)
    assert chat.store.personas.get("voice-4")["adapter_id"] == before_row["id"]
    assert [v["id"] for v in chat.store.adapters.versions("voice-4")] == [before_row["id"]]
    again = reply(chat, "voice-4")[0]
    assert again["content"] == first["content"] and again["meta"]["adapter_sha256"] == before_row["sha256"]


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "deleted"])
def test_damaged_adapter_on_disk_falls_back_to_the_card_with_a_warning(damage, chat8):
    chat = chat8
    row = chat.store.current_adapter(chat.store.personas.get("voice-6"))
    chat.engine.forget("voice-6")  # as after a restart: read from disk again
    weights = chat.store.adapters.folder(row) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "bit-flipped":
        data[len(data) // 2] ^= 0x10
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    msg, events = reply(chat, "voice-6")
    warnings = [e.text for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "Voice 6" in warnings[0] and "card alone" in warnings[0]
    assert msg["meta"]["adapter_sha256"] is None and msg["meta"]["warning"] == warnings[0]
    assert "voice-6" not in chat.engine.resident()
