"""PNG character cards: reading the card out of a PNG's text chunks and writing one in.

The format is SillyTavern's: a tEXt chunk `chara` holds base64 of the V2 JSON and, in newer
files, a tEXt chunk `ccv3` holds base64 of the V3 JSON; `ccv3` wins when both are there
(V3 spec). Keywords are matched case-insensitively, as SillyTavern does. Reading walks the
chunks with the stdlib (no image decoding): lengths and CRCs must hold, and the file must
reach IEND, so a truncated or damaged file is refused rather than half read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from core.errors import CardInvalid
from core.cards.model import MAX_AVATAR_PIXELS, MAX_CARD_JSON_BYTES, MAX_PNG_BYTES, Card
from core.cards.safejson import loads_bounded
from core.cards.spec import card_to_v2_dict, card_to_v3_dict, dump_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")  # in order of preference
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
# base64 of the largest card JSON, plus room for line breaks some tools insert.
_MAX_PAYLOAD = MAX_CARD_JSON_BYTES * 4 // 3 + 64 * 1024
MAIN_ICON_DEFAULT = {"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}

Chunk = tuple[bytes, bytes]  # (type, body)


@dataclass
class PngCard:
    """The card object found in a PNG, which chunk it came from, and the image without it."""

    obj: Any
    keyword: str
    avatar: bytes
    warnings: list[str] = field(default_factory=list)


def parse_chunks(data: bytes, what: str = "PNG") -> list[Chunk]:
    """Split a PNG into chunks, checking lengths and CRCs, up to IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise CardInvalid(f"The {what} is not a PNG image.")
    chunks: list[Chunk] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise CardInvalid(
                f"The {what} is cut short (it ends before its last chunk). Download or export it again."
            )
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if not ctype.isalpha() or end > len(data):
            raise CardInvalid(f"The {what} is cut short or damaged at byte {pos:,}. Download or export it again.")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype + body) != crc:
            raise CardInvalid(
                f"The {what} is damaged: the {ctype.decode('ascii')} chunk at byte {pos:,} fails its checksum. "
                "Download or export it again."
            )
        if not chunks and ctype != b"IHDR":
            raise CardInvalid(f"The {what} is damaged: it does not start with an image header.")
        chunks.append((ctype, body))
        pos = end
        if ctype == b"IEND":
            return chunks


def build_png(chunks: list[Chunk]) -> bytes:
    out = io.BytesIO()
    out.write(PNG_SIGNATURE)
    for ctype, body in chunks:
        out.write(struct.pack(">I", len(body)))
        out.write(ctype)
        out.write(body)
        out.write(struct.pack(">I", zlib.crc32(ctype + body)))
    return out.getvalue()


def _keyword(ctype: bytes, body: bytes) -> str | None:
    if ctype not in _TEXT_TYPES:
        return None
    return body.split(b"\0", 1)[0].decode("latin-1").lower()


def _is_card_chunk(ctype: bytes, body: bytes) -> bool:
    kw = _keyword(ctype, body)
    # chara-ext-asset_* chunks are V3's embedded-asset leftovers; they belong to the card, not the image.
    return kw is not None and (kw in CARD_KEYWORDS or kw.startswith("chara-ext-asset_"))


def _inflate(data: bytes, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _MAX_PAYLOAD)
    except zlib.error:
        raise CardInvalid(f"The PNG's compressed {keyword!r} text is damaged. Export the card again.") from None
    if inflater.unconsumed_tail:
        raise CardInvalid(f"The PNG's {keyword!r} text is larger than any real card; it was not read.")
    return out


def _text_payload(ctype: bytes, body: bytes, keyword: str) -> bytes:
    """The raw text of a tEXt/zTXt/iTXt chunk (latin-1 or UTF-8 bytes)."""
    rest = body.split(b"\0", 1)[1] if b"\0" in body else b""
    if ctype == b"tEXt":
        return rest
    if ctype == b"zTXt":
        return _inflate(rest[1:], keyword)
    # iTXt: compression flag, method, language\0, translated keyword\0, text
    if len(rest) < 2:
        raise CardInvalid(f"The PNG's {keyword!r} text is damaged. Export the card again.")
    flag, tail = rest[0], rest[2:]
    parts = tail.split(b"\0", 2)
    text = parts[2] if len(parts) == 3 else b""
    return _inflate(text, keyword) if flag else text


def _decode_card_text(raw: bytes, keyword: str) -> Any:
    what = f"card in the PNG's {keyword!r} text"
    s = raw.strip()
    if s.startswith(b"{"):
        # A few tools store the JSON itself rather than base64 of it.
        return loads_bounded(s, what)
    if len(s) > _MAX_PAYLOAD:
        raise CardInvalid(
            f"The {what} is {len(s) / 1024**2:.1f} MB, more than any real card; it was not imported."
        )
    compact = b"".join(s.split())
    compact = compact.replace(b"-", b"+").replace(b"_", b"/")  # URL-safe base64, seen in the wild
    compact += b"=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CardInvalid(
            f"The PNG's {keyword!r} text is not base64-encoded card data, so the card cannot be read. "
            "Export the card again from SillyTavern."
        ) from None
    if not decoded.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        raise CardInvalid(
            f"The PNG's {keyword!r} text does not decode to card JSON; the card is damaged. "
            "Export it again from SillyTavern."
        )
    return loads_bounded(decoded, what)


def read_png_card(data: bytes) -> PngCard:
    """Find and parse the card in a PNG; `ccv3` first, `chara` if that is missing or damaged."""
    if len(data) > MAX_PNG_BYTES:
        raise CardInvalid(
            f"The PNG is {len(data) / 1024**2:.0f} MB; card images over {MAX_PNG_BYTES // 1024**2} MB are refused. "
            "Shrink the image in SillyTavern and export again."
        )
    chunks = parse_chunks(data, "PNG card")
    found: dict[str, tuple[bytes, bytes]] = {}
    for ctype, body in chunks:
        kw = _keyword(ctype, body)
        if kw in CARD_KEYWORDS and kw not in found:
            found[kw] = (ctype, body)
    if not found:
        raise CardInvalid(
            "This PNG holds no character card (no 'chara' or 'ccv3' text inside); it is probably a plain image. "
            "Export the character from SillyTavern as a PNG card, or import its .json."
        )
    warnings: list[str] = []
    first_error: CardInvalid | None = None
    for kw in CARD_KEYWORDS:
        if kw not in found:
            continue
        try:
            obj = _decode_card_text(_text_payload(*found[kw], kw), kw)
        except CardInvalid as exc:
            first_error = first_error or exc
            continue
        if first_error is not None:
            warnings.append(f"The card's V3 data could not be read ({first_error}); its V2 data was used instead.")
        avatar = build_png([c for c in chunks if not _is_card_chunk(*c)])
        return PngCard(obj=obj, keyword=kw, avatar=avatar, warnings=warnings)
    assert first_error is not None
    raise first_error


def _placeholder_chunks(seed: str, size: int = 256) -> list[Chunk]:
    """A plain square in a colour derived from the name: an avatar when the persona has none."""
    r, g, b = hashlib.sha256(seed.encode("utf-8")).digest()[:3]
    r, g, b = (96 + r // 2, 96 + g // 2, 96 + b // 2)  # mid-tones: readable under light or dark text
    row = b"\x00" + bytes((r, g, b)) * size
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return [(b"IHDR", ihdr), (b"IDAT", zlib.compress(row * size, 9)), (b"IEND", b"")]


def placeholder_png(seed: str) -> bytes:
    return build_png(_placeholder_chunks(seed))


def image_to_png(data: bytes) -> bytes | None:
    """An icon as PNG bytes without card chunks, converting JPEG/WebP with Pillow; None if it cannot."""
    if data.startswith(PNG_SIGNATURE):
        try:
            return build_png([c for c in parse_chunks(data, "icon") if not _is_card_chunk(*c)])
        except CardInvalid:
            return None
    try:
        from PIL import Image  # optional: only needed for non-PNG icons in CHARX files
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_AVATAR_PIXELS:
                return None
            if im.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                im = im.convert("RGBA")
            out = io.BytesIO()
            im.save(out, "PNG")
            return out.getvalue()
    except Exception:  # Pillow raises many types on hostile input; any of them means "no avatar"
        return None


def card_to_png(card: Card) -> bytes:
    """A PNG card SillyTavern reads: the avatar (or a placeholder) with `chara` (V2) and `ccv3` (V3)."""
    if card.avatar:
        if card.avatar.startswith(PNG_SIGNATURE):
            chunks = parse_chunks(card.avatar, "avatar")
        else:
            png = image_to_png(card.avatar)
            if png is None:
                raise CardInvalid("The persona's avatar is not an image Chorus can read; choose another and export again.")
            chunks = parse_chunks(png, "avatar")
        chunks = [c for c in chunks if not _is_card_chunk(*c)]
    else:
        chunks = _placeholder_chunks(card.name)
    v2 = base64.b64encode(dump_json(card_to_v2_dict(card)))
    v3 = base64.b64encode(dump_json(card_to_v3_dict(card, assets=[dict(MAIN_ICON_DEFAULT)])))
    text = [(b"tEXt", b"chara\0" + v2), (b"tEXt", b"ccv3\0" + v3)]
    return build_png(chunks[:-1] + text + chunks[-1:])  # before IEND, as SillyTavern does
