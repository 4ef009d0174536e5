"""`read_card`: one entry point for every card file, told apart by content, not by extension.

JSON (V1/V2/V3), PNG (`ccv3` preferred over `chara`) and zip (CHARX / Chorus bundle) are
recognised by their first bytes; sizes are checked before a file is read whole. The result
is complete or an exception: nothing is imported halfway, and this layer writes nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

from core.errors import CardInvalid
from core.cards.assets import data_url_bytes, embedded_path, skipped_warning, triage
from core.cards.bundle import read_bundle
from core.cards.model import MAX_CARD_JSON_BYTES, MAX_PNG_BYTES, CardImport
from core.cards.png import PNG_SIGNATURE, image_to_png, read_png_card
from core.cards.safejson import loads_bounded
from core.cards.spec import Parsed, keep_assets, parse_card_obj

_SNIFF_BYTES = 4096


def sniff(head: bytes) -> str:
    """"png", "zip", "json" or a CardInvalid explaining what the file seems to be instead."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "json"  # UTF-16 with a BOM; the JSON reader decodes it
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text.startswith((b"{", b"[")):
        return "json"
    if head.startswith(b"\xff\xd8\xff") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        raise CardInvalid(
            "This is a JPEG or WebP image. Chorus reads character cards as PNG, JSON or .charx; "
            "export the character from SillyTavern as a PNG card or as JSON."
        )
    if not head.strip():
        raise CardInvalid("The file is empty.")
    raise CardInvalid(
        "This file is not a character card Chorus knows (expected a PNG card, a card .json, or a .charx bundle)."
    )


def _name_from_filename(filename: str | None) -> str | None:
    if not filename:
        return None
    stem = Path(filename).name
    for suffix in (".charx", ".zip", ".json", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.strip()[:100] or None


def _finish(parsed: Parsed, warnings: list[str], source_format: str, *, png: bool) -> CardImport:
    """Resolve what a PNG or bare JSON can resolve of the V3 assets; keep URLs; warn about the rest."""
    card = parsed.card
    sorted_assets = triage(parsed.assets)
    icon = sorted_assets.main_icon
    if icon is not None and not png:  # in a PNG, the image itself is the icon
        uri = icon.get("uri")
        if (blob := data_url_bytes(uri)) is not None:
            card.avatar = image_to_png(blob)
            if card.avatar is None:
                warnings.append("The card's icon is not an image Chorus can read; it was imported without an avatar.")
        elif isinstance(uri, str) and uri.startswith(("http://", "https://")):
            warnings.append(f"The card's icon is a web link ({uri[:80]}); Chorus does not download it, so it has no avatar.")
        elif embedded_path(uri) is not None:
            warnings.append("The card's icon was inside a .charx file; import the .charx to get the avatar.")
    if sorted_assets.adapter:
        warnings.append(
            "This card lists a Chorus adapter, but a PNG or JSON file cannot carry one; "
            "import the persona's bundle (.charx) to get the adapter."
        )
    keep_assets(card, sorted_assets.kept)
    if (note := skipped_warning(sorted_assets.skipped)) is not None:
        warnings.append(note)
    return CardImport(card=card, warnings=warnings, source_format=source_format)


def read_card(source: str | Path | bytes, filename: str | None = None) -> CardImport:
    """Read a character card or persona bundle from a path or from bytes.

    `filename` (optional) names the file in messages and gives the card a name when it has
    none. Raises `CardInvalid` or `UnsafeArchive`, with a message for the user, on any problem.
    """
    path: Path | None = None
    data: bytes | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        head, size = data[:_SNIFF_BYTES], len(data)
    else:
        path = Path(source)
        filename = filename or path.name
        try:
            if path.is_dir():
                raise CardInvalid(f"{path} is a folder, not a card file.")
            size = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(_SNIFF_BYTES)
        except FileNotFoundError:
            raise CardInvalid(f"There is no file at {path}.") from None
        except OSError as exc:
            raise CardInvalid(f"Cannot read {path}: {exc.strerror or exc}.") from None
    fallback = _name_from_filename(filename)
    kind = sniff(head)

    if kind == "zip":
        return read_bundle(path if path is not None else io.BytesIO(data), fallback_name=fallback)
    limit = MAX_PNG_BYTES if kind == "png" else MAX_CARD_JSON_BYTES
    if size > limit:
        what = "PNG card" if kind == "png" else "card JSON"
        raise CardInvalid(
            f"The {what} is {size / 1024**2:.1f} MB, over the {limit // 1024**2} MB limit for character cards; "
            "it was not imported."
        )
    if data is None:
        data = path.read_bytes()
    if kind == "png":
        found = read_png_card(data)
        parsed = parse_card_obj(found.obj, fallback_name=fallback)
        parsed.card.avatar = found.avatar
        return _finish(parsed, [*found.warnings, *parsed.warnings], f"png-{found.keyword}", png=True)
    parsed = parse_card_obj(loads_bounded(data, "card file"), fallback_name=fallback)
    return _finish(parsed, list(parsed.warnings), f"json-{parsed.kind}", png=False)
