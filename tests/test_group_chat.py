"""Group chats (core.group_chat) on the tiny model: modes, order, prompts, mentions,
persistence, deleted members, exports and per-member stop."""

import json
import threading

import pytest

from core.chat import ChatService
from core.engine import GenerationSettings
from core.errors import ChorusError, NotFound
from core.group_chat import GroupChatService, parse_mentions
from core.persona_cards import export_conversation
from core.starter import seed_starters
from storage.store import Store

TRIO = ["byte", "captain-mara", "juniper"]


@pytest.fixture
def group(tiny_engine, chorus_home):
    store = Store()
    seed_starters(store)
    return GroupChatService(store, ChatService(store, tiny_engine))


@pytest.fixture
def prompts(group, monkeypatch):
    """The decoded prompt of every engine.stream call, with the thread it ran on."""
    seen: list[dict] = []
    engine = group.chat.engine
    real = engine.stream

    def spy(input_ids, adapter, settings, stop=None, result=None):
        text = engine.tokenizer.decode(input_ids)
        # the turns after the system message (the cards' own text names them too)
        seen.append({"text": text.split("<|im_end|>", 1)[1], "thread": threading.current_thread().name})
        return real(input_ids, adapter, settings, stop, result)

    monkeypatch.setattr(engine, "stream", spy)
    return seen


def settings(seed=3, n=8):
    return GenerationSettings(temperature=0.8, max_new_tokens=n, seed=seed)


def replies(group, conv_id):
    return [m for m in group.store.conversations.path(conv_id) if m["role"] == "assistant"]


def test_group_size_is_checked_and_nothing_is_saved(group):
    with pytest.raises(ChorusError, match="2 to 8 personas; 1 picked"):
        group.start_group(["byte"])
    with pytest.raises(ChorusError, match="2 to 8 personas; 9 picked"):
        group.start_group([f"p{i}" for i in range(9)])
    with pytest.raises(NotFound):
        group.start_group(["byte", "nobody"])
    with pytest.raises(ChorusError, match="Unknown reply mode"):
        group.start_group(TRIO, mode="shout")
    assert group.store.conversations.list() == []


def test_in_turn_each_member_sees_the_replies_before_it(group, prompts):
    conv = group.start_group(TRIO)
    assert conv["group_mode"] == "turn" and conv["members"] == TRIO
    events = list(group.send(conv["id"], "Hello, all of you!", settings()))
    assert [e.persona_id for e in events if e.kind == "done"] == TRIO
    assert [e.persona_id for e in events[:3]] == TRIO and {e.kind for e in events[:3]} == {"queued"}
    # one member's stream ends before the next one starts
    order = [(e.persona_id, e.kind) for e in events if e.kind in ("start", "done")]
    assert order == [(p, k) for p in TRIO for k in ("start", "done")]
    path = group.store.conversations.path(conv["id"])
    assert [m["role"] for m in path] == ["user", "assistant", "assistant", "assistant"]
    # a chain: each reply answers the one before it
    assert [m["parent_id"] for m in path[1:]] == [m["id"] for m in path[:-1]]
    assert [m["persona_name"] for m in path[1:]] == ["Byte", "Captain Mara", "Juniper"]
    texts = {e.persona_id: e.text for e in events if e.kind == "done"}
    assert all(texts.values())
    # Byte's prompt shows only the user; Mara's shows Byte's reply under his name; Juniper's both
    assert "Byte:" not in prompts[0]["text"]
    assert "Byte: " + texts["byte"][:12] in prompts[1]["text"]
    assert "Byte: " + texts["byte"][:12] in prompts[2]["text"]
    assert "Captain Mara: " + texts["captain-mara"][:12] in prompts[2]["text"]
    assert "User: Hello, all of you!" in prompts[2]["text"]  # the user is named once others speak


def test_together_answers_one_prompt_concurrently_and_keeps_all_replies(group, prompts):
    conv = group.start_group(TRIO, mode="together")
    events = list(group.send(conv["id"], "Quick, everyone!", settings()))
    starts = [i for i, e in enumerate(events) if e.kind == "start"]
    first_done = min(i for i, e in enumerate(events) if e.kind == "done")
    assert len(starts) == 3 and max(starts) < first_done  # all started before any ended
    assert len({p["thread"] for p in prompts}) == 3 and threading.current_thread().name not in {p["thread"] for p in prompts}
    for p in prompts:  # nobody saw another member's reply of this round
        assert not any(f"{name}:" in p["text"] for name in ("Byte", "Captain Mara", "Juniper"))
    saved = replies(group, conv["id"])
    assert [m["persona_id"] for m in saved] == TRIO  # saved in member order, on one branch
    # the next round's prompts see every reply of this one
    prompts.clear()
    group.set_mode(conv["id"], "turn")
    list(group.send(conv["id"], "And now?", settings(n=4)))
    for name, msg in (("Captain Mara", saved[1]), ("Juniper", saved[2])):
        assert f"{name}: {msg['content'][:12]}" in prompts[0]["text"]


def test_mentions_pick_the_longest_name_and_ignore_emails(group):
    members = [{"id": "c", "name": "Captain"}, {"id": "cm", "name": "Captain Mara"}, {"id": "b", "name": "Byte"}]
    found, unknown = parse_mentions("@captain mara, then @BYTE; mail me at x@byte.com, @Bob", members)
    assert [p["id"] for p in found] == ["cm", "b"] and unknown == ["Bob"]
    found, _ = parse_mentions("@Captain: you first", members)
    assert [p["id"] for p in found] == ["c"]
    found, _ = parse_mentions("@Byte and @all", members)
    assert [p["id"] for p in found] == ["b", "c", "cm"]
    assert parse_mentions("no one here", members) == ([], [])


def test_mention_mode_replies_only_those_addressed(group):
    conv = group.start_group(TRIO, mode="mention")
    with pytest.raises(ChorusError, match="mentions nobody"):
        group.send(conv["id"], "Is anyone there?", settings())
    with pytest.raises(ChorusError, match="@Zed"):
        group.send(conv["id"], "@Zed are you there?", settings())
    assert group.store.conversations.path(conv["id"]) == []  # refused before anything was saved
    events = list(group.send(conv["id"], "@juniper and @captain mara, and @Zed too", settings()))
    assert [e.persona_id for e in events if e.kind == "done"] == ["juniper", "captain-mara"]
    warnings = [e.text for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "@Zed" in warnings[0]


def test_group_reopens_with_members_and_mode_from_a_fresh_store(group, chorus_home):
    conv = group.start_group(TRIO, title="Crew", mode="together")
    list(group.send(conv["id"], "Ahoy", settings(n=4)))
    group.set_mode(conv["id"], "mention")
    again = Store(chorus_home)
    row = again.conversations.get(conv["id"])
    assert row["members"] == TRIO and row["group_mode"] == "mention"
    listed = [c for c in again.conversations.list() if c["id"] == conv["id"]][0]
    assert listed["members"] == TRIO and listed["group_mode"] == "mention"
    with pytest.raises(ChorusError, match="Unknown reply mode"):
        group.set_mode(conv["id"], "loud")
    one = group.chat.start_conversation("byte")
    with pytest.raises(ChorusError, match="one-to-one"):
        group.set_mode(one["id"], "turn")


def test_a_deleted_member_leaves_the_group(group):
    conv = group.start_group(TRIO)
    list(group.send(conv["id"], "Hi", settings(n=4)))
    group.chat.delete_persona("captain-mara")
    events = list(group.send(conv["id"], "Still here?", settings(n=4)))
    assert [e.persona_id for e in events if e.kind == "done"] == ["byte", "juniper"]
    names = [m["persona_name"] for m in replies(group, conv["id"])]
    assert names == ["Byte", "Captain Mara", "Juniper", "Byte", "Juniper"]  # past messages keep the name
    group.chat.delete_persona("byte")
    group.chat.delete_persona("juniper")
    with pytest.raises(ChorusError, match="nobody is left"):
        group.send(conv["id"], "Hello?", settings())
    with pytest.raises(ChorusError, match="deleted"):
        group.regenerate(conv["id"], settings=settings())


def test_regenerate_one_members_reply_makes_a_sibling(group):
    conv = group.start_group(TRIO)
    list(group.send(conv["id"], "Hi", settings(n=6)))
    path = group.store.conversations.path(conv["id"])
    middle = path[2]  # Captain Mara's reply
    events = list(group.regenerate(conv["id"], middle["id"], settings(seed=9, n=6)))
    assert events[-1].kind == "done" and events[-1].persona_id == "captain-mara"
    new = events[-1].message
    assert new["parent_id"] == middle["parent_id"] and new["id"] != middle["id"]
    shown = group.store.conversations.path(conv["id"])
    assert shown[-1]["id"] == new["id"] and shown[-1]["sibling_count"] == 2
    # the old version and the reply that followed it are still there, one swipe away
    group.store.conversations.select(middle["id"])
    assert [m["persona_id"] for m in replies(group, conv["id"])] == TRIO


def test_deleting_a_reply_from_the_middle_of_a_round_keeps_the_others(group):
    conv = group.start_group(TRIO)
    list(group.send(conv["id"], "Hi", settings(n=4)))
    path = group.store.conversations.path(conv["id"])
    group.store.conversations.delete_message(path[2]["id"], keep_replies=True)
    after = group.store.conversations.path(conv["id"])
    assert [m["persona_id"] for m in after[1:]] == ["byte", "juniper"]
    assert after[2]["parent_id"] == after[1]["id"]


def test_stopping_one_member_leaves_the_others_going(group):
    conv = group.start_group(TRIO, mode="together")
    stops = {pid: threading.Event() for pid in TRIO}
    seen = []
    for event in group.send(conv["id"], "Long stories, please", settings(n=48), stops):
        if event.kind == "delta" and event.persona_id == "byte":
            stops["byte"].set()
        seen.append(event)
    by = {m["persona_id"]: m for m in replies(group, conv["id"])}
    assert by["byte"]["meta"]["stopped"] is True
    assert by["captain-mara"]["meta"]["stopped"] is False and by["juniper"]["meta"]["stopped"] is False
    assert [e.persona_id for e in seen if e.kind == "done"] == TRIO
    # in turn: a member stopped before its turn is skipped, the next one still replies
    group.set_mode(conv["id"], "turn")
    stops = {"captain-mara": threading.Event()}
    stops["captain-mara"].set()
    events = list(group.send(conv["id"], "Again", settings(n=4), stops))
    assert [(e.persona_id, e.kind) for e in events if e.kind in ("done", "skipped")] == [
        ("byte", "done"), ("captain-mara", "skipped"), ("juniper", "done")]


def test_leaving_a_together_round_early_keeps_what_was_written(group):
    conv = group.start_group(TRIO, mode="together")
    events = group.send(conv["id"], "Go", settings(n=48))
    for event in events:
        if event.kind == "delta":
            break
    events.close()
    saved = replies(group, conv["id"])
    assert [m["persona_id"] for m in saved] == [p for p in TRIO if p in {m["persona_id"] for m in saved}]
    assert saved and all(m["meta"]["stopped"] or m["content"] for m in saved)


def test_exports_keep_the_speakers_and_the_group(group, tmp_path):
    conv = group.start_group(TRIO, title="Crew")
    list(group.send(conv["id"], "Hi", settings(n=4)))
    md = export_conversation(group.store, conv["id"], tmp_path / "crew.md").read_text()
    assert "Group chat: Byte, Captain Mara, Juniper (replies in turn)" in md
    for name in ("**Byte**", "**Captain Mara**", "**Juniper**", "**You**"):
        assert name in md
    line = json.loads(export_conversation(group.store, conv["id"], tmp_path / "crew.jsonl").read_text())
    assert [m.get("name") for m in line["messages"]] == [None, "Byte", "Captain_Mara", "Juniper"]
    assert line["metadata"]["group"]["mode"] == "turn"
    assert [m["persona_name"] for m in line["metadata"]["group"]["members"]] == ["Byte", "Captain Mara", "Juniper"]


def test_group_html_escapes_names_and_gives_each_live_reply_a_stop():
    from ui import render

    evil = {"id": "x", "name": "<img src=x onerror=alert(1)>"}
    head = render.active_group_html([evil, {"id": "b", "name": "Byte"}], {}, "in turn")
    assert "<img src=x" not in head and "&lt;img src=x" in head
    live = [{"role": "assistant", "content": "hi <b>there</b>", "persona_id": "x", "persona_name": evil["name"], "meta": {}},
            {"role": "assistant", "content": "", "persona_id": "b", "persona_name": "Byte", "meta": {}, "waiting": True}]
    html = render.transcript_html([], {}, streaming=live, together=True)
    assert html.count('data-act="stop-member"') == 2 and 'data-id="b"' in html
    assert "ch-live-together" in html and "ch-tag-wait" in html
    assert "<b>there</b>" not in html and "<img src=x" not in html
    convs = render.conversation_list_html(
        [{"id": "c", "title": "t", "message_count": 2, "members": ["x", "gone"], "personas": ["Gone Guy"]}], None, {"x": "X<i>"})
    assert "Group: X&lt;i&gt;, Gone Guy" in convs
