"""The card as Chorus holds it: `Card`, `CardImport`, and the limits every reader enforces.

A `Card` is format-neutral. The spec readers (`spec.py`) fill it from V1/V2/V3 JSON, the
writers turn it back into V2/V3 JSON, and whatever Chorus does not use lives in `extras`
so that an export gives it back unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Limits. Real cards are a few KB to a few hundred KB; these sit far above that and far
# below what would hurt the app (memory, a UI textarea, a prompt).
MAX_CARD_JSON_BYTES = 2 * 1024 * 1024  # whole card JSON; a lorebook-heavy card is ~500 KB
MAX_STRING_CHARS = 256 * 1024  # any one string anywhere in the card
MAX_JSON_DEPTH = 64  # real cards nest ~6 deep (data.character_book.entries[].extensions)
MAX_PNG_BYTES = 20 * 1024 * 1024  # a card PNG, and the avatar inside a bundle
MAX_AVATAR_PIXELS = 64 * 1024 * 1024  # decoding a non-PNG icon: refuse pixel bombs
MAX_ADAPTER_WEIGHTS_BYTES = 1024**3  # adapter_model.safetensors; a LoRA is usually 5-200 MB
MAX_ADAPTER_SIDE_BYTES = {  # the small files beside the weights
    "adapter_config.json": 1024 * 1024,
    "training_config.json": 1024 * 1024,
    "chorus_adapter.json": 1024 * 1024,
    "evaluation.json": 16 * 1024 * 1024,
    "training_log.jsonl": 64 * 1024 * 1024,
}
# Everything a bundle may unpack to: the adapter, its logs, the avatar, the card, slack.
MAX_BUNDLE_BYTES = MAX_ADAPTER_WEIGHTS_BYTES + sum(MAX_ADAPTER_SIDE_BYTES.values()) + 64 * 1024 * 1024

ADAPTER_REQUIRED = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_OPTIONAL = ("training_config.json", "chorus_adapter.json", "training_log.jsonl", "evaluation.json")
ADAPTER_FILES = ADAPTER_REQUIRED + ADAPTER_OPTIONAL
# Weight formats that are Python pickles: loading one can run arbitrary code.
PICKLE_EXTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FINGERPRINT_KEYS = ("base_model", "base_fingerprint", "architecture", "vocab_size")


@dataclass
class Card:
    """One character, whatever file it came from. Text fields use `\\n` line ends."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    greeting: str = ""  # first_mes
    alternate_greetings: list[str] = field(default_factory=list)
    # mes_example, verbatim: `<START>` blocks with `{{char}}:` / `{{user}}:` lines are not expanded.
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    # What Chorus does not use, kept for export: {"data": {...}, "root": {...}}.
    # "data" holds unknown keys of the card's `data` object (extensions, character_book,
    # nickname, group_only_greetings, assets Chorus did not consume...); "root" holds unknown
    # top-level keys (SillyTavern's avatar/chat/talkativeness/fav/create_date...). Empty parts
    # are left out, so two equal cards compare equal.
    extras: dict[str, Any] = field(default_factory=dict)
    avatar: bytes | None = field(default=None, repr=False)  # PNG bytes, card chunks stripped


@dataclass
class CardImport:
    """What `read_card` found: the card, the adapter files if the bundle had some, and notes.

    `adapter_meta` is the base-model fingerprint the adapter was trained on (keys
    `base_model`, `base_fingerprint`, `architecture`, `vocab_size`), None without an adapter.
    `warnings` are sentences for the user: what was skipped and why.
    """

    card: Card
    adapter_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)
    source_format: str = ""  # "json-v1", "json-v2", "json-v3", "png-ccv3", "png-chara", "charx"
    adapter_meta: dict[str, Any] | None = None

    @property
    def has_adapter(self) -> bool:
        return bool(self.adapter_files)

    def adapter_mismatch(self, current: dict[str, Any]) -> str | None:
        """Why this adapter cannot run on the base model described by `current`, or None if it can.

        `current` has the same keys as `adapter_meta`. The fingerprint decides when both sides
        have one; otherwise name, architecture and vocabulary size must all agree.
        """
        if not self.has_adapter:
            return None
        meta = self.adapter_meta or {}
        theirs, ours = meta.get("base_fingerprint"), current.get("base_fingerprint")
        if theirs and ours:
            same = theirs == ours
        else:
            same = all(meta.get(k) == current.get(k) for k in ("base_model", "architecture", "vocab_size"))
        if same:
            return None
        return (
            f"The adapter in this bundle was trained on the base model {meta.get('base_model') or 'unknown'!s} "
            f"(fingerprint {str(theirs or '?')[:12]}), but Chorus runs {current.get('base_model') or 'unknown'!s} "
            f"(fingerprint {str(ours or '?')[:12]}). A LoRA adapter only works on the model it was trained on, "
            "so the card was imported without it; train the persona again on this model."
        )

    def without_adapter(self, reason: str) -> CardImport:
        """The same import with the adapter left out and `reason` added to the warnings."""
        return dataclasses.replace(
            self, adapter_files={}, adapter_meta=None, warnings=[*self.warnings, reason]
        )
