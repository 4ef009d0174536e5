"""`write_card`: write a card (and optionally its adapter) to a file, the format chosen by extension.

`.png` -> PNG card (chara + ccv3), `.json` -> V2 JSON (what SillyTavern imports),
`.charx` / `.zip` -> bundle with the adapter when one is given. All writes are atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.errors import ExportFormatUnknown
from core.cards.bundle import write_bundle
from core.cards.fileio import atomic_write_bytes
from core.cards.model import Card
from core.cards.png import card_to_png
from core.cards.spec import card_to_v2_json

FORMATS = {".png": "png", ".json": "json", ".charx": "bundle", ".zip": "bundle"}


def write_card(
    card: Card, out_path: str | Path, adapter: str | Path | Mapping[str, bytes] | None = None
) -> Path:
    """Write `card` to `out_path`; an adapter is only carried by a bundle (.charx/.zip)."""
    out_path = Path(out_path)
    kind = FORMATS.get(out_path.suffix.lower())
    if kind is None:
        raise ExportFormatUnknown(
            f"Chorus cannot export a persona as {out_path.suffix or 'a file without extension'}; "
            "use .charx (card and adapter), .png (card with avatar) or .json (card only)."
        )
    if kind == "bundle":
        return write_bundle(card, adapter, out_path)
    data = card_to_png(card) if kind == "png" else card_to_v2_json(card)
    return atomic_write_bytes(out_path, data)
