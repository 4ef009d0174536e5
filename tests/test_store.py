"""The SQLite store: schema, personas, conversations as trees, adapter files."""

import json
import sqlite3

import pytest

from core.starter import load_starter_cards, seed_starters
from storage.errors import NotFound
from storage.personas import PersonaInvalid
from storage.store import Store

EXPECTED_COLUMNS = {
    "personas": [
        "id", "name", "tagline", "description", "personality", "scenario", "greeting",
        "alternate_greetings", "example_dialogue", "system_prompt", "avatar", "extras",
        "source", "adapter_id", "created", "updated",
    ],
    "adapters": [
        "id", "persona_id", "version", "folder", "sha256", "base_model", "base_fingerprint",
        "rank", "alpha", "target_modules", "size_bytes", "created",
    ],
    "conversations": ["id", "title", "leaf_id", "created", "updated", "members", "group_mode"],
    "messages": [
        "id", "conversation_id", "parent_id", "role", "content", "persona_id", "persona_name", "meta", "created",
    ],
    "settings": ["key", "value"],
    "training_runs": [
        "id", "persona_id", "export_name", "speaker", "config", "status", "step", "total_steps", "error",
        "adapter_id", "evaluation", "pid", "created", "updated", "owner_host", "owner_pid", "owned_since",
    ],
    "training_progress": ["id", "run_id", "step", "loss", "eval_loss", "learning_rate", "tokens_per_s", "elapsed_s", "created"],
    "voice_picks": ["run_id", "pair", "pick", "created"],
}


def test_empty_database_migrates_to_exact_columns(chorus_home):
    store = Store()
    db = store.handle.db
    tables = {t for t in db.table_names() if not t.startswith("_")}
    assert tables == set(EXPECTED_COLUMNS)
    for table, columns in EXPECTED_COLUMNS.items():
        assert [c.name for c in db[table].columns] == columns, table
    assert [m["name"] for m in db["_sqlite_migrations"].rows] == ["m001_initial", "m002_training", "m003_training_owner", "m004_voice_picks", "m005_groups"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_does_not_migrate_twice(chorus_home):
    Store()
    store = Store()
    assert store.handle.db["_sqlite_migrations"].count == 5


def test_persona_ids_are_stable_slugs(chorus_home):
    store = Store()
    a = store.personas.create({"name": "Ada Lovelace", "description": "Mathematician"})
    b = store.personas.create({"name": "Ada Lovelace"})
    assert a["id"] == "ada-lovelace" and b["id"] == "ada-lovelace-2"
    store.personas.update(a["id"], {"name": "Countess Ada"})
    assert store.personas.get("ada-lovelace")["name"] == "Countess Ada"
    assert store.personas.find("countess ada")["id"] == "ada-lovelace"


def test_persona_validation_messages(chorus_home):
    store = Store()
    with pytest.raises(PersonaInvalid, match="needs a name"):
        store.personas.create({"name": "   "})
    with pytest.raises(PersonaInvalid, match="limit"):
        store.personas.create({"name": "X", "description": "y" * 300_000})
    with pytest.raises(PersonaInvalid, match="PNG, JPEG"):
        p = store.personas.create({"name": "X"})
        store.personas.set_avatar(p["id"], b"not an image")
    with pytest.raises(NotFound, match="No persona is called"):
        store.personas.find("nobody")


def test_json_fields_round_trip(chorus_home):
    store = Store()
    p = store.personas.create({"name": "Q", "alternate_greetings": ["hi", "yo"], "extras": {"tags": ["x"], "n": 1}})
    again = store.personas.get(p["id"])
    assert again["alternate_greetings"] == ["hi", "yo"]
    assert again["extras"] == {"tags": ["x"], "n": 1}


def test_starters_seed_once_and_deleted_ones_stay_deleted(chorus_home):
    store = Store()
    cards = load_starter_cards()
    assert len(cards) >= 4
    assert seed_starters(store) == len(cards)
    ids = {p["id"] for p in store.personas.list()}
    assert ids == {c["id"] for c in cards}
    assert all(store.personas.avatar_path(p) for p in store.personas.list())
    store.delete_persona(cards[0]["id"])
    assert seed_starters(store) == 0
    assert cards[0]["id"] not in {p["id"] for p in store.personas.list()}


def test_messages_and_siblings_round_trip(chorus_home):
    store = Store()
    convs = store.conversations
    c = convs.create()
    greet = convs.add_message(c["id"], "assistant", "Hello", parent_id=None, persona_id="p1", persona_name="P One")
    user = convs.add_message(c["id"], "user", "How are you?", parent_id=greet["id"])
    r1 = convs.add_message(c["id"], "assistant", "Fine", parent_id=user["id"], persona_id="p1", persona_name="P One", meta={"seed": 1})
    r2 = convs.add_message(c["id"], "assistant", "Great", parent_id=user["id"], persona_id="p2", persona_name="P Two")
    path = convs.path(c["id"])
    assert [m["content"] for m in path] == ["Hello", "How are you?", "Great"]
    assert path[-1]["sibling_ids"] == [r1["id"], r2["id"]] and path[-1]["sibling_index"] == 1
    convs.select(r1["id"])
    path = convs.path(c["id"])
    assert path[-1]["content"] == "Fine" and path[-1]["meta"] == {"seed": 1}
    assert path[-1]["persona_name"] == "P One"
    assert convs.get(c["id"])["title"] == "How are you?"
    listed = convs.list()[0]
    assert listed["message_count"] == 4 and set(listed["personas"]) == {"P One", "P Two"}


def test_delete_message_removes_subtree_and_moves_leaf(chorus_home):
    store = Store()
    convs = store.conversations
    c = convs.create()
    u = convs.add_message(c["id"], "user", "a", parent_id=None)
    r = convs.add_message(c["id"], "assistant", "b", parent_id=u["id"])
    u2 = convs.add_message(c["id"], "user", "c", parent_id=r["id"])
    convs.add_message(c["id"], "assistant", "d", parent_id=u2["id"])
    convs.delete_message(u2["id"])
    assert [m["content"] for m in convs.path(c["id"])] == ["a", "b"]
    assert len(convs.all_messages(c["id"])) == 2


def test_conversation_survives_reopen_and_delete_cascades(chorus_home):
    store = Store()
    c = store.conversations.create("First")
    store.conversations.add_message(c["id"], "user", "hi", parent_id=None)
    store2 = Store()
    assert [m["content"] for m in store2.conversations.path(c["id"])] == ["hi"]
    store2.conversations.delete(c["id"])
    assert store2.handle.db["messages"].count == 0
    with pytest.raises(NotFound):
        store2.conversations.get(c["id"])


def test_adapter_versions_are_atomic_and_kept(chorus_home, tmp_path):
    store = Store()
    p = store.personas.create({"name": "Voice"})
    src = tmp_path / "ad"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (src / "adapter_model.safetensors").write_bytes(b"weights-1")
    (src / "junk.bin").write_bytes(b"pickle")
    meta = {"rank": 4, "alpha": 8, "target_modules": ["q_proj"], "base_fingerprint": "f"}
    v1 = store.adapters.add_version(p["id"], src, meta)
    (src / "adapter_model.safetensors").write_bytes(b"weights-2")
    v2 = store.adapters.add_version(p["id"], src, meta)
    assert (v1["version"], v2["version"]) == (1, 2)
    assert store.personas.get(p["id"])["adapter_id"] == v2["id"]
    folder = store.adapters.folder(v1)
    assert sorted(x.name for x in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (store.adapters.folder(v2) / "adapter_model.safetensors").read_bytes() == b"weights-2"
    assert v1["sha256"] != v2["sha256"]
    # a crash leftover: a temp folder and an unregistered version folder
    (chorus_home / "adapters" / p["id"] / ".tmp-dead").mkdir()
    (chorus_home / "adapters" / p["id"] / "v9").mkdir()
    Store()
    assert sorted(x.name for x in (chorus_home / "adapters" / p["id"]).iterdir()) == ["v1", "v2"]


def test_failed_registration_leaves_nothing(chorus_home, tmp_path):
    store = Store()
    src = tmp_path / "ad"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(b"w")
    with pytest.raises(sqlite3.IntegrityError):
        store.adapters.add_version("no-such-persona", src, {"rank": 1, "alpha": 1})
    assert store.handle.db["adapters"].count == 0
    assert not any((chorus_home / "adapters" / "no-such-persona").iterdir())


def test_deleting_persona_keeps_its_messages_labelled(chorus_home):
    store = Store()
    p = store.personas.create({"name": "Gone Soon"})
    c = store.conversations.create()
    store.conversations.add_message(c["id"], "assistant", "bye", parent_id=None, persona_id=p["id"], persona_name=p["name"])
    store.delete_persona(p["id"])
    msg = store.conversations.path(c["id"])[0]
    assert msg["persona_name"] == "Gone Soon"


def test_damaged_json_columns_read_as_empty_and_leave_the_rest_of_the_row():
    from storage.db import decode_json

    row = {"id": 7, "extras": "{not json", "alternate_greetings": '{"a": 1}', "meta": None, "config": '{"rank": 8}'}
    out = decode_json(row, {"extras": dict, "alternate_greetings": list, "meta": dict, "config": dict})
    assert out == {"id": 7, "extras": {}, "alternate_greetings": [], "meta": {}, "config": {"rank": 8}}
    assert row["extras"] == "{not json"  # the row given is left as it was
