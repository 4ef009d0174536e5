"""Cards and bundles through the persona store: import, export, round trips, hostile files."""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from core.cards import card_to_v3_json, read_card, write_bundle
from core.cards.model import Card
from core.cards.png import build_png, parse_chunks
from core.errors import AdapterIncompatible, CardInvalid, ChorusError, ExportFormatUnknown, UnsafeArchive
from core.persona_cards import (
    BaseIdentity,
    base_identity_from_folder,
    export_conversation,
    export_persona,
    import_card,
)
from storage.store import Store
from tests.cards.helpers import V2_CARD, adapter_files, b64json, make_zip, png_with_text

OTHER_BASE = BaseIdentity("HuggingFaceTB/SmolLM2-1.7B-Instruct", "f" * 16, "LlamaForCausalLM", 49152)
PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]
FIELDS = ("name", "description", "personality", "scenario", "greeting", "alternate_greetings",
          "example_dialogue", "system_prompt", "tagline", "extras")


@pytest.fixture
def store(chorus_home):
    return Store(chorus_home)


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir):
    return base_identity_from_folder(tiny_model_dir, "tiny-llama")


def write(path: Path, data: bytes | str | dict) -> Path:
    if isinstance(data, dict):
        data = json.dumps(data)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(store: Store) -> dict:
    """Everything an import could leave behind."""
    home = store.home
    return {
        "personas": [p["id"] for p in store.personas.list()],
        "adapters": store.handle.db["adapters"].count,
        "files": sorted(str(p.relative_to(home)) for p in home.rglob("*")
                        if (home / "adapters") in p.parents or (home / "avatars") in p.parents
                        or p.name.startswith(".import-")),
    }


def card_fields(row: dict) -> dict:
    return {k: row[k] for k in FIELDS}


def persona_with_adapter(store: Store, folder: Path, base: BaseIdentity, avatar: bytes | None = None) -> dict:
    from core.adapters import inspect_adapter

    fields = card_to_fields(V2_CARD)
    row = store.personas.create(fields, source="user")
    if avatar:
        store.personas.set_avatar(row["id"], avatar)
    meta = inspect_adapter(folder).store_meta()
    meta["base_fingerprint"] = base.fingerprint
    store.adapters.add_version(row["id"], folder, meta)
    return store.personas.get(row["id"])


def card_to_fields(obj: dict) -> dict:
    from core.cards import card_to_persona_fields
    from core.cards.spec import parse_card_obj

    return card_to_persona_fields(parse_card_obj(copy.deepcopy(obj)).card)


# card shapes -----------------------------------------------------------------


def test_v2_card_with_v1_fields_repeated(store, tmp_path):
    report = import_card(store, write(tmp_path / "mira.json", V2_CARD), base=OTHER_BASE)
    row = store.personas.get(report.persona_id)
    assert (report.name, report.source_format, report.adapter_version) == ("Captain Mira", "json-v2", None)
    assert row["source"] == "import"
    assert row["greeting"] == "*wipes a glass* What'll it be?"
    assert row["example_dialogue"] == "<START>\n{{user}}: Hi\n{{char}}: Arr."  # placeholders verbatim
    assert row["alternate_greetings"] == ["Ahoy.", "Back again?"]
    assert row["system_prompt"] == "You are {{char}}."
    assert row["extras"]["data"]["character_book"]["name"] == "Tavern lore"
    assert row["extras"]["root"]["talkativeness"] == "0.5"
    assert row["tagline"] == "Made for testing."
    assert report.warnings == []


def test_v1_only_card_with_crlf_and_empty_examples(store, tmp_path):
    v1 = {"name": "Old Tom", "description": "Line one.\r\nLine two.", "personality": "", "scenario": "",
          "first_mes": "Hello\r\nthere", "mes_example": "", "chat": "Old Tom - 2023-1-1", "talkativeness": "0.5"}
    report = import_card(store, write(tmp_path / "tom.json", v1), base=OTHER_BASE)
    row = store.personas.get(report.persona_id)
    assert report.source_format == "json-v1"
    assert row["description"] == "Line one.\nLine two."
    assert row["greeting"] == "Hello\nthere"
    assert row["example_dialogue"] == ""
    assert row["extras"]["root"] == {"chat": "Old Tom - 2023-1-1", "talkativeness": "0.5"}


def test_v3_json_card(store, tmp_path):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0",
          "data": {**copy.deepcopy(V2_CARD["data"]), "nickname": "Cap", "group_only_greetings": []}}
    report = import_card(store, write(tmp_path / "v3.json", v3), base=OTHER_BASE)
    row = store.personas.get(report.persona_id)
    assert report.source_format == "json-v3"
    assert row["extras"]["data"]["nickname"] == "Cap"


def test_png_card_prefers_ccv3_and_keeps_the_avatar(store, tmp_path):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**V2_CARD["data"], "name": "Mira Three"}}
    png = png_with_text((b"chara", b64json(V2_CARD)), (b"ccv3", b64json(v3)))
    report = import_card(store, write(tmp_path / "card.png", png), base=OTHER_BASE)
    row = store.personas.get(report.persona_id)
    assert (report.name, report.source_format, report.has_avatar) == ("Mira Three", "png-ccv3", True)
    avatar = store.personas.avatar_path(row).read_bytes()
    assert b"ccv3" not in avatar and b"chara" not in avatar
    assert [c[0] for c in parse_chunks(avatar)][0] == b"IHDR"


def test_base_is_only_asked_for_when_a_bundle_carries_an_adapter(store, tmp_path):
    def no_model():
        raise AssertionError("a plain card must not need the model")

    report = import_card(store, write(tmp_path / "mira.json", V2_CARD), base=no_model)
    assert report.persona_id == "captain-mira"


def test_same_name_twice_warns_and_adds_beside(store, tmp_path):
    path = write(tmp_path / "mira.json", V2_CARD)
    first = import_card(store, path, base=OTHER_BASE)
    second = import_card(store, path, base=OTHER_BASE)
    assert (first.persona_id, second.persona_id) == ("captain-mira", "captain-mira-2")
    assert "already exists" in second.warnings[0]


def test_oversized_avatar_is_dropped_with_a_warning(store, tmp_path):
    base = png_with_text((b"chara", b64json(V2_CARD)))
    chunks = parse_chunks(base)
    big = build_png(chunks[:1] + [(b"zzTx", b"\0" * (9 * 1024 * 1024))] + chunks[1:])
    report = import_card(store, write(tmp_path / "big.png", big), base=OTHER_BASE)
    assert report.has_avatar is False
    assert any("picture was not kept" in w for w in report.warnings)
    assert store.personas.get(report.persona_id)["avatar"] is None


# exports of the card alone ------------------------------------------------------


@pytest.mark.parametrize("ext", [".json", ".png", ".charx"])
def test_card_round_trip_through_the_store(store, tmp_path, ext):
    png = png_with_text((b"chara", b64json(V2_CARD)))
    first = import_card(store, write(tmp_path / "in.png", png), base=OTHER_BASE)
    out = export_persona(store, "Captain Mira", tmp_path / f"out{ext}")
    again = import_card(store, out, base=OTHER_BASE)
    a, b = store.personas.get(first.persona_id), store.personas.get(again.persona_id)
    assert card_fields(a) == card_fields(b)
    if ext != ".json":  # a JSON card has no picture
        assert store.personas.avatar_path(a).read_bytes() == store.personas.avatar_path(b).read_bytes()


def test_v2_json_export_is_what_sillytavern_reads(store, tmp_path):
    import_card(store, write(tmp_path / "mira.json", V2_CARD), base=OTHER_BASE)
    obj = json.loads(export_persona(store, "captain-mira", tmp_path / "out.json").read_bytes())
    assert obj["spec"] == "chara_card_v2" and obj["data"]["first_mes"] == V2_CARD["data"]["first_mes"]
    assert obj["first_mes"] == V2_CARD["first_mes"]  # V1 mirror at the top level
    assert obj["talkativeness"] == "0.5"  # kept from the import
    assert obj["data"]["character_book"] == V2_CARD["data"]["character_book"]


def test_unknown_export_format(store, tmp_path):
    import_card(store, write(tmp_path / "mira.json", V2_CARD), base=OTHER_BASE)
    with pytest.raises(ExportFormatUnknown):
        export_persona(store, "captain-mira", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


# bundles with a real adapter ------------------------------------------------------


def test_bundle_round_trip_with_a_real_adapter(store, tmp_path, tiny_adapters, tiny_base, chorus_home):
    source = tiny_adapters["a"]
    avatar = png_with_text()
    persona = persona_with_adapter(store, source, tiny_base, avatar)
    bundle = export_persona(store, persona["id"], tmp_path / "mira.charx")

    other = Store(tmp_path / "other-machine")  # a second data folder: "another machine"
    report = import_card(other, bundle, base=tiny_base)
    assert report.adapter_version == 1 and report.source_format == "charx" and report.has_avatar
    imported = other.personas.get(report.persona_id)
    assert card_fields(imported) == card_fields(persona)
    row = other.current_adapter(imported)
    folder = other.adapters.folder(row)
    for name in ("adapter_model.safetensors", "adapter_config.json", "chorus_adapter.json"):
        assert sha(folder / name) == sha(source / name)
    assert row["sha256"] == sha(source / "adapter_model.safetensors")
    assert row["base_fingerprint"] == tiny_base.fingerprint

    # ... and once more: export from the second store, import into a third.
    bundle2 = export_persona(other, report.persona_id, tmp_path / "again.zip")
    third = Store(tmp_path / "third")
    report3 = import_card(third, bundle2, base=tiny_base)
    row3 = third.current_adapter(third.personas.get(report3.persona_id))
    assert card_fields(third.personas.get(report3.persona_id)) == card_fields(persona)
    assert sha(third.adapters.folder(row3) / "adapter_model.safetensors") == sha(source / "adapter_model.safetensors")
    assert not list((tmp_path / "other-machine").glob(".import-*"))


def test_imported_adapter_loads_and_changes_the_voice(store, tmp_path, tiny_adapters, tiny_base, tiny_engine):
    from core.engine import AdapterRef, GenerationSettings

    persona = persona_with_adapter(store, tiny_adapters["b"], tiny_base)
    bundle = export_persona(store, persona["id"], tmp_path / "b.charx")
    other = Store(tmp_path / "other-machine")
    report = import_card(other, bundle, engine=tiny_engine)  # base from the engine; checked and loaded
    row = other.current_adapter(other.personas.get(report.persona_id))
    assert tiny_engine.resident() == [report.persona_id]

    greedy = lambda: GenerationSettings(temperature=0, max_new_tokens=12, seed=7)  # noqa: E731
    ref = AdapterRef(report.persona_id, other.adapters.folder(row), row["sha256"])
    tiny_engine.ensure_adapter(ref)
    voiced = tiny_engine.generate(PROMPT, ref, greedy())
    bare = tiny_engine.generate(PROMPT, None, greedy())
    direct = tiny_engine.generate(PROMPT, AdapterRef("direct", tiny_adapters["b"]), greedy())
    assert voiced != bare
    assert voiced == direct  # the same adapter as the one exported


def test_bundle_for_another_base_imports_the_card_only(store, tmp_path, tiny_adapters, tiny_base):
    persona = persona_with_adapter(store, tiny_adapters["a"], tiny_base)
    bundle = export_persona(store, persona["id"], tmp_path / "mira.charx")
    other = Store(tmp_path / "other-machine")
    report = import_card(other, bundle, base=OTHER_BASE)
    assert report.adapter_version is None
    assert any("only works on the model it was trained on" in w and "tiny-llama" in w for w in report.warnings)
    assert other.personas.get(report.persona_id)["adapter_id"] is None
    assert other.handle.db["adapters"].count == 0
    assert not (other.home / "adapters" / report.persona_id).exists()


def test_png_export_of_a_persona_with_adapter_still_works(store, tmp_path, tiny_adapters, tiny_base):
    persona = persona_with_adapter(store, tiny_adapters["a"], tiny_base)
    out = export_persona(store, persona["id"], tmp_path / "mira.png")
    assert read_card(out).card.name == "Captain Mira"


def test_adapter_without_metadata_gets_the_fingerprint_from_the_store(store, tmp_path, tiny_adapters, tiny_base):
    bare = tmp_path / "bare-adapter"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((tiny_adapters["a"] / name).read_bytes())
    persona = persona_with_adapter(store, bare, tiny_base)
    bundle = export_persona(store, persona["id"], tmp_path / "mira.charx")
    report = import_card(Store(tmp_path / "other"), bundle, base=tiny_base)
    assert report.adapter_version == 1


def test_corrupted_stored_adapter_is_not_exported(store, tmp_path, tiny_adapters, tiny_base):
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(tiny_adapters["a"], copy_dir)
    persona = persona_with_adapter(store, copy_dir, tiny_base)
    weights = store.adapters.folder(store.current_adapter(persona)) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChorusError, match="checksum"):
        export_persona(store, persona["id"], tmp_path / "mira.charx")
    assert not (tmp_path / "mira.charx").exists()


# hostile files: a clear message, and the store as it was ---------------------------------


def _traversal_zip():
    return make_zip([("card.json", card_to_v3_json(Card(name="X"))), ("../../evil.txt", b"x")])


def _bomb_zip():
    return make_zip([("card.json", card_to_v3_json(Card(name="X"))), ("assets/other/big.bin", b"\0" * (300 * 1024**2))])


def _pickle_bundle(tmp_path):
    files = adapter_files()
    files["adapter_model.safetensors"] = b"\x80\x04\x95" + b"\0" * 64  # a pickle wearing the name
    out = tmp_path / "src-pickle.charx"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("card.json", json.dumps({"spec": "chara_card_v3", "spec_version": "3.0", "data": {
            "name": "P", "assets": [{"type": "x_chorus_adapter", "name": n,
                                     "uri": f"embeded://assets/x_chorus_adapter/other/{n}"} for n in files]}}))
        for n, data in files.items():
            zf.writestr(f"assets/x_chorus_adapter/other/{n}", data)
    return out.read_bytes()


HOSTILE = {
    "truncated.png": lambda tmp: png_with_text((b"chara", b64json(V2_CARD)))[:200],
    "not-base64.png": lambda tmp: png_with_text((b"chara", b"!!!not base64!!!")),
    "broken.json": lambda tmp: b'{"name": "X", "description": ',
    "list.json": lambda tmp: b"[1, 2, 3]",
    "traversal.charx": lambda tmp: _traversal_zip(),
    "bomb.charx": lambda tmp: _bomb_zip(),
    "pickle.charx": _pickle_bundle,
    "huge-field.json": lambda tmp: json.dumps({**V2_CARD, "data": {**V2_CARD["data"], "personality": "x" * 270_000}}).encode(),
    "huge-string.json": lambda tmp: json.dumps({"name": "X", "description": "x" * 300_000}).encode(),
    "long-name.json": lambda tmp: json.dumps({"name": "N" * 200, "description": "d"}).encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_leave_the_store_unchanged(store, tmp_path, name):
    import_card(store, write(tmp_path / "ok.json", V2_CARD), base=OTHER_BASE)
    before = snapshot(store)
    path = write(tmp_path / name, HOSTILE[name](tmp_path))
    with pytest.raises((CardInvalid, UnsafeArchive)) as info:
        import_card(store, path, base=OTHER_BASE)
    assert str(info.value) and "Traceback" not in str(info.value)
    assert snapshot(store) == before


def test_pickle_bundle_message_names_the_problem(store, tmp_path):
    with pytest.raises(CardInvalid, match="pickle"):
        import_card(store, write(tmp_path / "p.charx", _pickle_bundle(tmp_path)), base=OTHER_BASE)


def test_failure_after_the_row_is_created_rolls_everything_back(store, tmp_path, tiny_adapters, tiny_base):
    """An adapter that passes the file checks but is not LoRA: the persona, avatar and files go."""
    files = {p.name: p.read_bytes() for p in tiny_adapters["a"].iterdir() if p.is_file()}
    config = json.loads(files["adapter_config.json"])
    config["peft_type"] = "LOHA"
    files["adapter_config.json"] = json.dumps(config).encode()
    bundle = write_bundle(Card(name="Half", avatar=png_with_text()), files, tmp_path / "half.charx")
    before = snapshot(store)
    with pytest.raises(AdapterIncompatible, match="LoRA"):
        import_card(store, bundle, base=tiny_base)
    assert snapshot(store) == before
    assert not list(store.home.glob("avatars/half-*"))


def test_engine_refusal_rolls_back(store, tmp_path, tiny_adapters, tiny_base):
    class RefusingEngine:
        def __init__(self):
            self.forgotten: list[str] = []

        def check_adapter(self, folder):
            from core.adapters import inspect_adapter

            return inspect_adapter(folder)

        def ensure_adapter(self, ref):
            raise AdapterIncompatible("The adapter does not fit the running model.")

        def forget(self, persona_id):
            self.forgotten.append(persona_id)

    persona = persona_with_adapter(store, tiny_adapters["a"], tiny_base)
    bundle = export_persona(store, persona["id"], tmp_path / "m.charx")
    other = Store(tmp_path / "other")
    engine = RefusingEngine()
    with pytest.raises(AdapterIncompatible):
        import_card(other, bundle, base=tiny_base, engine=engine)
    assert other.personas.list() == [] and other.handle.db["adapters"].count == 0
    assert not any((other.home / "adapters").rglob("*"))
    assert engine.forgotten == ["captain-mira"]


# conversations ---------------------------------------------------------------------


def _two_voice_conversation(store: Store) -> str:
    conv = store.conversations.create("Tavern night")
    c = store.conversations
    m1 = c.add_message(conv["id"], "assistant", "What'll it be?", parent_id=None, persona_id="mira", persona_name="Captain Mira")
    m2 = c.add_message(conv["id"], "user", "Rum, please.", parent_id=m1["id"])
    m3 = c.add_message(conv["id"], "assistant", "Watered, as always.", parent_id=m2["id"], persona_id="mira", persona_name="Captain Mira")
    c.add_message(conv["id"], "assistant", "Don't drink that.", parent_id=m3["id"], persona_id="tom", persona_name="Old Tom")
    # A regenerated sibling that is not on the shown branch stays out of the export.
    c.add_message(conv["id"], "assistant", "HIDDEN", parent_id=m2["id"], persona_id="mira", persona_name="Captain Mira")
    c.select(m3["id"])
    return conv["id"]


def test_conversation_markdown_keeps_each_speaker(store, tmp_path):
    cid = _two_voice_conversation(store)
    text = export_conversation(store, cid, tmp_path / "chat.md").read_text()
    assert text.startswith("# Tavern night")
    assert text.index("**Captain Mira**") < text.index("**You**") < text.index("**Old Tom**")
    assert "HIDDEN" not in text


def test_conversation_jsonl_keeps_the_persona_of_each_reply(store, tmp_path):
    cid = _two_voice_conversation(store)
    lines = export_conversation(store, cid, tmp_path / "chat.jsonl").read_text().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    roles = [(m["role"], m.get("name")) for m in obj["messages"]]
    assert roles == [("assistant", "Captain_Mira"), ("user", None), ("assistant", "Captain_Mira"), ("assistant", "Old_Tom")]
    assert obj["metadata"]["personas"]["Old_Tom"] == {"persona_id": "tom", "persona_name": "Old Tom"}


def test_conversation_export_refusals(store, tmp_path):
    cid = store.conversations.create("empty")["id"]
    with pytest.raises(ExportFormatUnknown):
        export_conversation(store, cid, tmp_path / "chat.html")
    with pytest.raises(ChorusError, match="no messages"):
        export_conversation(store, cid, tmp_path / "chat.md")
    with pytest.raises(ChorusError, match="no conversation"):
        export_conversation(store, "nope", tmp_path / "chat.md")
    assert list(tmp_path.glob("chat.*")) == []
