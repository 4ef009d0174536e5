"""Persona bundles (CHARX zips): round trips with adapters, other apps' CHARX, hostile zips."""

import io
import json
import os
import zipfile

import pytest
from PIL import Image

from core.cards import Card, read_card, write_bundle, write_card
from core.errors import CardInvalid, UnsafeArchive
from tests.cards.helpers import FINGERPRINT, adapter_files, b64json, make_zip, png_with_text, symlink_info


@pytest.fixture
def persona(v2_card):
    card = read_card(png_with_text((b"chara", b64json(v2_card)))).card
    assert card.avatar
    return card


def test_round_trip_card_and_adapter_bytes(out_dir, persona):
    files = adapter_files()
    out = write_bundle(persona, files, out_dir / "mira.charx")
    imp = read_card(out)
    assert imp.source_format == "charx" and imp.warnings == []
    assert imp.card == persona
    assert imp.adapter_files == files
    assert imp.adapter_meta == FINGERPRINT
    assert imp.adapter_mismatch(FINGERPRINT) is None
    # export -> import again: still the same card and the same bytes
    again = read_card(write_bundle(imp.card, imp.adapter_files, out_dir / "again.charx"))
    assert again.card == persona and again.adapter_files == files


def test_bundle_layout(out_dir, persona):
    out = write_bundle(persona, adapter_files(), out_dir / "mira.charx")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        card = json.loads(zf.read("card.json"))
        assert zf.getinfo("assets/x_chorus_adapter/ai/adapter_model.safetensors").compress_type == zipfile.ZIP_STORED
    assert names[0] == "card.json"
    assert "assets/icon/images/main.png" in names
    assert card["spec"] == "chara_card_v3"
    assets = card["data"]["assets"]
    assert assets[0] == {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"}
    uris = {a["uri"] for a in assets}
    for name in adapter_files():
        sub = "ai" if name.endswith(".safetensors") else "other"
        assert f"embeded://assets/x_chorus_adapter/{sub}/{name}" in uris
    chorus = card["data"]["extensions"]["chorus"]
    assert chorus["adapter"]["base_fingerprint"] == FINGERPRINT["base_fingerprint"]
    # the card's own extensions survive beside Chorus's key
    assert card["data"]["extensions"]["depth_prompt"] == {"prompt": "", "depth": 4}


def test_adapter_from_folder(out_dir, persona):
    folder = out_dir / "adapter"
    folder.mkdir()
    for name, data in adapter_files().items():
        (folder / name).write_bytes(data)
    (folder / "README.md").write_text("not packaged")
    (folder / "optimizer.pt").write_bytes(b"\x80\x04 pickle")  # a trainer leftover, not the weights
    imp = read_card(write_bundle(persona, folder, out_dir / "m.charx"))
    assert imp.adapter_files == adapter_files()


def test_other_base_model_is_explained(out_dir, persona):
    imp = read_card(write_bundle(persona, adapter_files(), out_dir / "m.charx"))
    other = dict(FINGERPRINT, base_model="Qwen/Qwen2.5-0.5B", base_fingerprint="sha256:" + "cd" * 32)
    reason = imp.adapter_mismatch(other)
    assert reason and "SmolLM2" in reason and "Qwen" in reason
    card_only = imp.without_adapter(reason)
    assert card_only.card == persona and not card_only.has_adapter and reason in card_only.warnings


def test_card_only_bundle(out_dir):
    card = Card(name="No Adapter", description="d")
    imp = read_card(write_bundle(card, None, out_dir / "n.charx"))
    assert imp.card == card and not imp.has_adapter and imp.warnings == []


def test_write_card_dispatch(out_dir, persona):
    assert read_card(write_card(persona, out_dir / "a.png")).card == persona
    j = read_card(write_card(persona, out_dir / "a.json")).card
    assert j == Card(**{**persona.__dict__, "avatar": None})
    assert read_card(write_card(persona, out_dir / "a.charx", adapter_files())).has_adapter
    from core.errors import ExportFormatUnknown

    with pytest.raises(ExportFormatUnknown):
        write_card(persona, out_dir / "a.txt")


def test_writer_refuses_adapter_without_fingerprint(out_dir, persona):
    with pytest.raises(CardInvalid, match="base model"):
        write_bundle(persona, adapter_files(fingerprint=None), out_dir / "x.charx")
    assert list(out_dir.iterdir()) == []  # nothing written, no temp file left


def test_failed_write_keeps_the_old_file(out_dir, persona):
    out = out_dir / "keep.charx"
    out.write_bytes(b"previous export")
    bad = adapter_files()
    bad["adapter_model.safetensors"] = b"\x80\x04junk"
    with pytest.raises(CardInvalid):
        write_bundle(persona, bad, out)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.charx"]


# --- other apps' CHARX files -------------------------------------------------


def risu_like_charx(icon_format="WEBP", extra=()) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (0, 200, 0)).save(buf, icon_format)
    card = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            "name": "Risu Girl",
            "first_mes": "Hi!",
            "mes_example": "",
            "assets": [
                {"type": "icon", "uri": "embeded://assets/icon/images/1.webp", "name": "main", "ext": "webp"},
                {"type": "emotion", "uri": "embeded://assets/emotion/images/happy.png", "name": "happy", "ext": "png"},
                {"type": "x-risu-asset", "uri": "embeded://assets/other/model.ckpt", "name": "m", "ext": "ckpt"},
            ],
            "extensions": {"risuai": {"utilityBot": False}},
        },
    }
    return make_zip(
        [
            ("card.json", json.dumps(card).encode()),
            ("assets/icon/images/1.webp", buf.getvalue()),
            ("assets/emotion/images/happy.png", b"png"),
            ("assets/other/model.ckpt", b"\x80\x04 pickle never read"),
            ("module.risum", b"\x00\x01"),
            ("__MACOSX/._card.json", b"junk"),
            ("__MACOSX/assets/._1.webp", b"junk"),
            *extra,
        ]
    )


def test_risu_charx_with_macosx_junk():
    imp = read_card(risu_like_charx(), filename="risu.charx")
    assert imp.card.name == "Risu Girl"
    assert Image.open(io.BytesIO(imp.card.avatar)).format == "PNG"
    assert not imp.has_adapter
    assert any("embedded asset" in w for w in imp.warnings)
    assert imp.card.extras["data"]["extensions"] == {"risuai": {"utilityBot": False}}


def test_charx_rezipped_inside_a_folder():
    card = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "Nested"}}
    data = make_zip([("Nested/card.json", json.dumps(card).encode()), ("__MACOSX/Nested/._card.json", b"x")])
    assert read_card(data).card.name == "Nested"


def test_zip_without_card_json():
    with pytest.raises(CardInvalid, match="no card.json"):
        read_card(make_zip([("readme.txt", b"hello")]))


def test_missing_icon_file_warns():
    card = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {
        "name": "X", "assets": [{"type": "icon", "uri": "embeded://assets/icon/images/gone.png", "name": "main", "ext": "png"}]}}
    imp = read_card(make_zip([("card.json", json.dumps(card).encode())]))
    assert imp.card.avatar is None and any("missing" in w for w in imp.warnings)


# --- hostile and broken bundles ----------------------------------------------


def bundle_bytes(out_dir, card, files) -> bytes:
    return write_bundle(card, files, out_dir / "b.charx").read_bytes()


def rewrite(data: bytes, drop=(), add=()) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    entries = [(i.filename, src.read(i)) for i in src.infolist() if i.filename not in drop]
    return make_zip([*entries, *add])


def test_path_traversal(out_dir):
    data = make_zip([("card.json", b'{"name":"x"}'), ("../../etc/evil", b"x")])
    with pytest.raises(UnsafeArchive, match="unsafe path"):
        read_card(data)
    with pytest.raises(UnsafeArchive, match="unsafe path"):
        read_card(make_zip([("card.json", b'{"name":"x"}'), ("/abs/evil", b"x")]))


def test_zip_bomb():
    data = make_zip([("card.json", b'{"name":"x"}'), ("assets/other/bomb.txt", b"\0" * (8 * 1024 * 1024))])
    assert len(data) < 100_000
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        read_card(data)


def test_symlink_entry():
    data = make_zip([("card.json", b'{"name":"x"}'), (symlink_info("assets/icon/images/main.png"), b"/etc/passwd")])
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        read_card(data)


def test_oversized_card_json_in_zip():
    big = json.dumps({"name": "x", "description": "y" * 100, "pad": ["z" * 200_000] * 12}).encode()
    with pytest.raises((UnsafeArchive, CardInvalid), match="MB"):
        read_card(make_zip([("card.json", big)], method=zipfile.ZIP_STORED))


def test_corrupt_member_crc(out_dir, persona):
    data = bytearray(bundle_bytes(out_dir, persona, adapter_files()))
    # the weights are stored uncompressed, so their bytes can be found and damaged in place
    payload = adapter_files()["adapter_model.safetensors"][-32:]
    i = data.index(payload)
    data[i] ^= 0xFF
    with pytest.raises(UnsafeArchive, match="damaged"):
        read_card(bytes(data))


def test_truncated_zip(out_dir, persona):
    data = bundle_bytes(out_dir, persona, adapter_files())
    with pytest.raises((UnsafeArchive, CardInvalid)):
        read_card(data[: len(data) // 2])


def test_pickle_adapter_listed_in_card_refuses_everything(out_dir, persona):
    card = json.loads(zipfile.ZipFile(io.BytesIO(bundle_bytes(out_dir, persona, adapter_files()))).read("card.json"))
    for a in card["data"]["assets"]:
        if a["name"] == "adapter_model.safetensors":
            a.update(name="adapter_model.bin", uri="embeded://assets/x_chorus_adapter/ai/adapter_model.bin", ext="bin")
    data = make_zip([("card.json", json.dumps(card).encode()), ("assets/x_chorus_adapter/ai/adapter_model.bin", b"\x80\x04pickle")])
    with pytest.raises(CardInvalid, match="pickle"):
        read_card(data)


def test_pickle_file_in_adapter_folder_refuses(out_dir, persona):
    data = rewrite(bundle_bytes(out_dir, persona, adapter_files()), add=[("assets/x_chorus_adapter/ai/extra.pt", b"\x80\x04")])
    with pytest.raises(CardInvalid, match="pickle"):
        read_card(data)


def test_pickle_renamed_to_safetensors_refuses(out_dir, persona):
    data = bundle_bytes(out_dir, persona, adapter_files())
    path = "assets/x_chorus_adapter/ai/adapter_model.safetensors"
    data = rewrite(data, drop={path}, add=[(path, b"\x80\x04\x95 torch pickle")])
    with pytest.raises(CardInvalid, match="pickle"):
        read_card(data)


def test_writer_refuses_pickle_only_adapter(out_dir, persona):
    folder = out_dir / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CardInvalid, match="pickle"):
        write_bundle(persona, folder, out_dir / "x.charx")


def test_incomplete_adapter_refuses(out_dir, persona):
    data = bundle_bytes(out_dir, persona, adapter_files())
    data = rewrite(data, drop={"assets/x_chorus_adapter/other/adapter_config.json"})
    with pytest.raises(CardInvalid, match="incomplete"):
        read_card(data)


def test_truncated_safetensors_refuses(out_dir, persona):
    data = bundle_bytes(out_dir, persona, adapter_files())
    path = "assets/x_chorus_adapter/ai/adapter_model.safetensors"
    short = adapter_files()["adapter_model.safetensors"][:-5]
    with pytest.raises(CardInvalid, match="damaged"):
        read_card(rewrite(data, drop={path}, add=[(path, short)]))


def test_adapter_without_fingerprint_imports_card_only(out_dir, persona):
    data = bundle_bytes(out_dir, persona, adapter_files())
    card = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("card.json"))
    card["data"]["extensions"]["chorus"]["adapter"] = {"files": []}
    card["data"]["assets"] = [a for a in card["data"]["assets"] if a["name"] != "chorus_adapter.json"]
    data = rewrite(data, drop={"card.json", "assets/x_chorus_adapter/other/chorus_adapter.json"},
                   add=[("card.json", json.dumps(card).encode())])
    imp = read_card(data)
    assert imp.card == persona and not imp.has_adapter
    assert any("base model" in w for w in imp.warnings)


def test_temp_files_are_not_left_behind(out_dir, persona):
    write_bundle(persona, adapter_files(), out_dir / "ok.charx")
    assert [p.name for p in out_dir.iterdir()] == ["ok.charx"]
    assert oct(os.stat(out_dir / "ok.charx").st_mode & 0o777) == "0o644"


def test_save_imported_adapter_files(out_dir, persona):
    from core.cards.adapter import save_files

    imp = read_card(write_bundle(persona, adapter_files(), out_dir / "m.charx"))
    dest = save_files(imp.adapter_files, out_dir / "adapters" / "p-1")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == adapter_files()
    save_files(adapter_files(seed=2), dest)  # replacing an existing adapter
    assert (dest / "adapter_model.safetensors").read_bytes() == adapter_files(seed=2)["adapter_model.safetensors"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["p-1"]
