"""Character cards and persona bundles: reading and writing them, no model involved.

Read: `read_card(path_or_bytes)` -> `CardImport` (JSON V1/V2/V3, PNG cards, CHARX/Chorus bundles).
Write: `card_to_v2_json`, `card_to_v3_json`, `card_to_png`, `write_bundle`, `write_card`;
`save_adapter_files` puts an imported adapter into its folder (temp folder, then rename).
Persona rows: `card_to_persona_fields`, `persona_fields_to_card`.
Conversations: `conversation_to_markdown`, `conversation_to_openai_jsonl`.
Failures raise `CardInvalid` / `UnsafeArchive` (core.errors) with messages for the user.
See docs/cards.md for the bundle layout.
"""

from core.cards.adapter import save_files as save_adapter_files
from core.cards.bundle import read_bundle, write_bundle
from core.cards.conversation import conversation_to_markdown, conversation_to_openai_jsonl
from core.cards.export import write_card
from core.cards.model import Card, CardImport
from core.cards.persona import card_to_persona_fields, derive_tagline, persona_fields_to_card
from core.cards.png import card_to_png
from core.cards.reader import read_card
from core.cards.spec import card_to_v2_json, card_to_v3_json

__all__ = [
    "Card",
    "CardImport",
    "read_card",
    "read_bundle",
    "write_bundle",
    "write_card",
    "save_adapter_files",
    "card_to_v2_json",
    "card_to_v3_json",
    "card_to_png",
    "card_to_persona_fields",
    "persona_fields_to_card",
    "derive_tagline",
    "conversation_to_markdown",
    "conversation_to_openai_jsonl",
]
