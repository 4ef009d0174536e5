"""PNG cards: chara / ccv3 chunks, SillyTavern compatibility, damaged and hostile PNGs."""

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from core.cards import Card, card_to_png, read_card
from core.cards.png import PNG_SIGNATURE, parse_chunks
from core.errors import CardInvalid
from tests.cards.helpers import b64json, itxt_chunk, png_with_chunks, png_with_text


def text_chunks(png: bytes) -> dict[str, bytes]:
    return {b.split(b"\0", 1)[0].decode(): b.split(b"\0", 1)[1] for t, b in parse_chunks(png) if t == b"tEXt"}


def test_reads_chara_chunk_and_strips_it_from_the_avatar(v2_card):
    png = png_with_text((b"chara", b64json(v2_card)))
    imp = read_card(png)
    assert imp.source_format == "png-chara"
    assert imp.card.name == "Captain Mira"
    assert imp.card.avatar is not None and "chara" not in text_chunks(imp.card.avatar)
    assert Image.open(io.BytesIO(imp.card.avatar)).size == (8, 8)


def test_ccv3_wins_over_chara(v2_card):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": dict(v2_card["data"], name="Mira V3")}
    png = png_with_text((b"chara", b64json(v2_card)), (b"ccv3", b64json(v3)))
    imp = read_card(png)
    assert imp.card.name == "Mira V3" and imp.source_format == "png-ccv3"


def test_keyword_case_insensitive(v2_card):
    assert read_card(png_with_text((b"Chara", b64json(v2_card)))).card.name == "Captain Mira"


def test_damaged_ccv3_falls_back_to_chara_with_warning(v2_card):
    png = png_with_text((b"ccv3", b"!!!not base64!!!"), (b"chara", b64json(v2_card)))
    imp = read_card(png)
    assert imp.card.name == "Captain Mira" and imp.source_format == "png-chara"
    assert any("V3" in w for w in imp.warnings)


def test_itxt_and_compressed_itxt(v2_card):
    raw = b64json(v2_card)
    assert read_card(png_with_chunks(itxt_chunk(b"chara", raw))).card.name == "Captain Mira"
    assert read_card(png_with_chunks(itxt_chunk(b"chara", raw, compressed=True))).card.name == "Captain Mira"


def test_raw_json_in_chunk_is_accepted(v2_card):
    assert read_card(png_with_text((b"chara", json.dumps(v2_card).encode()))).card.name == "Captain Mira"


def test_base64_with_line_breaks_and_no_padding(v2_card):
    raw = b64json(v2_card).rstrip(b"=")
    wrapped = b"\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))
    assert read_card(png_with_text((b"chara", wrapped))).card.name == "Captain Mira"


def test_png_without_card_chunk():
    with pytest.raises(CardInvalid, match="no character card"):
        read_card(png_with_text((b"Software", b"GIMP")))


def test_non_base64_chunk():
    with pytest.raises(CardInvalid, match="not base64"):
        read_card(png_with_text((b"chara", b"@@@ definitely not base64 ###")))


def test_base64_of_garbage():
    with pytest.raises(CardInvalid, match="does not decode to card JSON"):
        read_card(png_with_text((b"chara", base64.b64encode(b"\x00\x01garbage"))))


@pytest.mark.parametrize("cut", [10, 40, -20, -5])
def test_truncated_png(v2_card, cut):
    png = png_with_text((b"chara", b64json(v2_card)))
    with pytest.raises(CardInvalid, match="cut short|damaged"):
        read_card(png[:cut])


def test_crc_mismatch(v2_card):
    png = bytearray(png_with_text((b"chara", b64json(v2_card))))
    i = png.index(b"chara") + 10
    png[i] ^= 0x01
    with pytest.raises(CardInvalid, match="checksum"):
        read_card(bytes(png))


def test_huge_chunk_length_does_not_allocate():
    png = PNG_SIGNATURE + struct.pack(">I4s", 0x7FFFFFFF, b"IHDR") + b"\0" * 20
    with pytest.raises(CardInvalid, match="cut short|damaged"):
        read_card(png)


def test_oversized_payload_refused():
    big = base64.b64encode(b"x" * (3 * 1024 * 1024))
    with pytest.raises(CardInvalid, match="MB"):
        read_card(png_with_text((b"chara", big)))


def test_compressed_bomb_in_itxt_refused():
    bomb = zlib.compress(b"A" * (8 * 1024 * 1024), 9)
    chunk = (b"iTXt", b"chara\0\x01\x00\0\0" + bomb)
    with pytest.raises(CardInvalid, match="larger than any real card"):
        read_card(png_with_chunks(chunk))


def test_png_over_size_limit(tmp_path):
    p = tmp_path / "big.png"
    with p.open("wb") as fh:
        fh.write(PNG_SIGNATURE)
        fh.truncate(21 * 1024 * 1024)
    with pytest.raises(CardInvalid, match="limit"):
        read_card(p)


def test_write_png_sillytavern_shape():
    card = Card(name="Ada", description="An engineer.", example_dialogue="<START>\n{{char}}: Hello.", tags=["x"])
    png = card_to_png(card)
    chunks = text_chunks(png)
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    v3 = json.loads(base64.b64decode(chunks["ccv3"]))
    assert v2["spec"] == "chara_card_v2" and v2["name"] == "Ada" and v2["data"]["mes_example"] == card.example_dialogue
    assert v3["spec"] == "chara_card_v3" and v3["data"]["assets"][0]["uri"] == "ccdefault:"
    # The text chunks sit before IEND, and the image decodes (a generated placeholder here).
    assert parse_chunks(png)[-1][0] == b"IEND"
    im = Image.open(io.BytesIO(png))
    im.load()
    assert im.size == (256, 256)


def test_png_round_trip_with_avatar(v2_card):
    src = png_with_text((b"chara", b64json(v2_card)))
    first = read_card(src).card
    second = read_card(card_to_png(first)).card
    assert second == first
    assert second.avatar == first.avatar  # the avatar bytes do not grow stale card chunks


def test_export_replaces_old_card_chunks(v2_card):
    card = read_card(png_with_text((b"chara", b64json(v2_card)))).card
    card.avatar = png_with_text((b"chara", b64json({"name": "stale"})))  # an avatar still holding a card
    out = card_to_png(card)
    names = [b.split(b"\0", 1)[0] for t, b in parse_chunks(out) if t == b"tEXt"]
    assert names.count(b"chara") == 1 and names.count(b"ccv3") == 1
    assert read_card(out).card.name == "Captain Mira"


def test_non_png_avatar_is_converted():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(buf, "JPEG")
    png = card_to_png(Card(name="J", avatar=buf.getvalue()))
    assert Image.open(io.BytesIO(png)).size == (4, 4)
    with pytest.raises(CardInvalid, match="avatar"):
        card_to_png(Card(name="J", avatar=b"not an image"))
