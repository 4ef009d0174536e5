"""Cards and bundles meet the persona store: import a card file as a persona, export a persona
(with its adapter) or a conversation as a file. One call each, for the UI and the command line.

`core.cards` reads and writes the formats and never touches the store; this module does the
store side. An import is complete or absent: the card file is read and checked in full before
anything is written, and if a later step fails (avatar, adapter check, adapter load) the new
persona, its avatar and its adapter files are removed before the error goes up.

An adapter in a bundle is kept only when it was trained on the base model in use, described by
a `BaseIdentity` (read from a model folder's config.json, no weights loaded, or from a loaded
engine). Otherwise the card is imported alone and the report says why.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.adapters import inspect_adapter
from core.cards import (
    card_to_persona_fields,
    conversation_to_markdown,
    conversation_to_openai_jsonl,
    persona_fields_to_card,
    read_card,
    save_adapter_files,
    write_card,
)
from core.cards import adapter as card_adapter
from core.cards.export import FORMATS as CARD_FORMATS
from core.cards.fileio import atomic_write_bytes
from core.errors import CardInvalid, ChorusError, ExportFormatUnknown
from core.loader import config_fingerprint
from storage.adapter_files import META
from storage.personas import PersonaInvalid
from storage.store import Store

CONVERSATION_FORMATS = {".md": "markdown", ".jsonl": "openai-jsonl"}


@dataclass(frozen=True)
class BaseIdentity:
    """Which base model is in use, as far as an adapter cares."""

    name: str  # what adapters record as their base model ("SmolLM2-135M-Instruct", a hub id)
    fingerprint: str  # core.loader.config_fingerprint of its config
    architecture: str  # config.architectures[0], e.g. "LlamaForCausalLM"
    vocab_size: int

    def as_meta(self) -> dict[str, Any]:
        """The keys `CardImport.adapter_mismatch` compares."""
        return {
            "base_model": self.name,
            "base_fingerprint": self.fingerprint,
            "architecture": self.architecture,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_engine(cls, engine) -> BaseIdentity:
        info = engine.info
        return cls(info.name, info.fingerprint, info.architecture, int(info.vocab_size))


def base_identity_from_folder(model_folder: str | Path, name: str) -> BaseIdentity:
    """The identity of the model saved in `model_folder`, from its config.json alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model_folder))
    except (OSError, ValueError) as exc:
        raise ChorusError(f"Cannot read the model's config.json in {model_folder}: {exc}") from None
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    return BaseIdentity(name, config_fingerprint(config), architecture, int(config.vocab_size))


def base_identity_for_model(model_spec: str | None, home: Path, progress: Callable[[str], None] | None = None) -> BaseIdentity:
    """The identity of `--model` (None: the embedded model), without loading its weights.

    The embedded model is converted to a folder once if that has not happened yet.
    """
    from core.model_source import resolve_model

    kwargs = {"progress": progress} if progress is not None else {}
    source = resolve_model(model_spec, Path(home), **kwargs)
    return base_identity_from_folder(source.path, source.name)


@dataclass
class ImportReport:
    persona_id: str
    name: str
    source_format: str  # "json-v1", "json-v2", "json-v3", "png-ccv3", "png-chara", "charx"
    adapter_version: int | None = None  # the stored adapter version, None when none was imported
    warnings: list[str] = field(default_factory=list)  # sentences for the user
    has_avatar: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BaseArg = BaseIdentity | Callable[[], BaseIdentity] | None


def _identity(base: BaseArg, engine) -> BaseIdentity:
    if isinstance(base, BaseIdentity):
        return base
    if callable(base):
        return base()
    if engine is not None:
        return BaseIdentity.from_engine(engine)
    raise ValueError("import_card needs `base` or `engine` to decide whether a bundle's adapter fits")


def import_card(
    store: Store,
    path: str | Path,
    *,
    base: BaseArg = None,
    engine=None,
    filename: str | None = None,
) -> ImportReport:
    """Import the card or bundle at `path` as a new persona; raise a ChorusError if it cannot be.

    `base` is the base model in use, or a function returning it (called only when the file
    carries an adapter, so a plain card never needs the model); it defaults to `engine`'s.
    With an `engine`, the adapter is checked against the loaded model and loaded too.
    `filename` names the card when it has no name (an upload's original name).
    """
    result = read_card(path, filename=filename)  # everything is read and checked here
    identity = None
    if result.has_adapter:
        identity = _identity(base, engine)
        reason = result.adapter_mismatch(identity.as_meta())
        if reason:
            result = result.without_adapter(reason)
    card = result.card
    warnings = list(result.warnings)
    if any(p["name"].lower() == " ".join(card.name.split()).lower() for p in store.personas.list()):
        warnings.append(
            f"A persona called {card.name!r} already exists; the imported one was added beside it."
        )
    try:
        persona = store.personas.create(card_to_persona_fields(card), source="import")
    except PersonaInvalid as exc:
        raise CardInvalid(f"This card does not fit a Chorus persona. {exc} Nothing was imported.") from None
    pid = persona["id"]
    report = ImportReport(pid, persona["name"], result.source_format, warnings=warnings)
    try:
        if card.avatar:
            try:
                store.personas.set_avatar(pid, card.avatar)
                report.has_avatar = True
            except PersonaInvalid as exc:
                report.warnings.append(f"The card's picture was not kept: {exc} The persona has no avatar.")
        if result.has_adapter:
            row = _install_adapter(store, pid, result.adapter_files, identity, engine)
            report.adapter_version = row["version"]
    except BaseException:
        _undo(store, pid, engine)
        raise
    return report


def _install_adapter(store: Store, pid: str, files: dict[str, bytes], identity: BaseIdentity, engine) -> dict:
    """Check the adapter files and store them as the persona's first version (and load them)."""
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=store.home))
    try:
        folder = save_adapter_files(files, staging / "adapter")
        spec = engine.check_adapter(folder) if engine is not None else inspect_adapter(folder)
        meta = spec.store_meta()
        meta["base_model"] = meta["base_model"] or identity.name
        meta["base_fingerprint"] = identity.fingerprint
        row = store.adapters.add_version(pid, folder, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if engine is not None:
        from core.engine import AdapterRef

        engine.ensure_adapter(AdapterRef(pid, store.adapters.folder(row), row["sha256"]))
    return row


def _undo(store: Store, pid: str, engine) -> None:
    """Remove a half-imported persona; the original error is what the user must see."""
    try:
        if engine is not None:
            engine.forget(pid)
    except Exception:
        pass
    try:
        store.delete_persona(pid)
    except Exception:
        store.adapters.remove_persona_files(pid)


# export ---------------------------------------------------------------------


def _adapter_for_export(store: Store, persona: dict) -> dict[str, bytes] | None:
    """The current adapter's files, checked against their stored checksum, with a fingerprint."""
    row = store.current_adapter(persona)
    if row is None:
        return None
    folder = store.adapters.folder(row)
    inspect_adapter(folder, row["sha256"])  # AdapterCorrupt if the weights changed on disk
    files = card_adapter.collect(folder)
    if META not in files:
        # Adapters attached from elsewhere may lack it; the store row knows the base it was checked on.
        meta = {"base_model": row["base_model"], "base_fingerprint": row["base_fingerprint"],
                "architecture": None, "vocab_size": None}
        files[META] = json.dumps(meta, indent=2).encode()
    return files


def export_persona(store: Store, persona_id_or_name: str, out_path: str | Path) -> Path:
    """Write a persona to `out_path`, the format chosen by its extension.

    `.charx` / `.zip`: a bundle with the card, the avatar and the current adapter (if any);
    `.png`: a PNG card SillyTavern reads; `.json`: a V2 card. Only a bundle carries the adapter.
    """
    out_path = Path(out_path)
    kind = CARD_FORMATS.get(out_path.suffix.lower())
    persona = store.personas.find(persona_id_or_name)
    avatar_path = store.personas.avatar_path(persona)
    card = persona_fields_to_card(persona, avatar_path.read_bytes() if avatar_path else None)
    adapter = _adapter_for_export(store, persona) if kind == "bundle" else None
    return write_card(card, out_path, adapter)  # raises ExportFormatUnknown for other extensions


def export_leaves_adapter_behind(store: Store, persona_id_or_name: str, out_path: str | Path) -> bool:
    """True when the persona has an adapter but `out_path`'s format cannot carry it (PNG, JSON)."""
    persona = store.personas.find(persona_id_or_name)
    kind = CARD_FORMATS.get(Path(out_path).suffix.lower())
    return kind not in (None, "bundle") and store.current_adapter(persona) is not None


GROUP_MODE_WORDS = {"turn": "in turn", "together": "all at once", "mention": "when @mentioned"}


def _group_members(store: Store, conversation: dict, messages: list[dict]) -> list[dict]:
    """A group chat's members as {persona_id, persona_name}; a deleted member keeps the name
    its messages carry. [] for a one-to-one chat."""
    spoken = {m.get("persona_id"): m.get("persona_name") for m in messages if m.get("persona_id")}
    out = []
    for pid in conversation.get("members") or []:
        try:
            name = store.personas.get(pid)["name"]
        except ChorusError:
            name = spoken.get(pid) or pid
        out.append({"persona_id": pid, "persona_name": name})
    return out


def export_conversation(store: Store, conversation_id: str, out_path: str | Path) -> Path:
    """Write the conversation's shown branch as Markdown (`.md`) or OpenAI chat JSONL (`.jsonl`).

    Each reply keeps the persona that wrote it (its name in Markdown; `name` and
    `metadata.personas` in JSONL).
    """
    out_path = Path(out_path)
    kind = CONVERSATION_FORMATS.get(out_path.suffix.lower())
    if kind is None:
        raise ExportFormatUnknown(
            f"Chorus cannot export a conversation as {out_path.suffix or 'a file without extension'}; "
            "use .md (a readable transcript) or .jsonl (OpenAI chat format)."
        )
    conversation = store.conversations.get(conversation_id)
    messages = store.conversations.path(conversation_id)
    if not messages:
        raise ChorusError("This conversation has no messages yet; there is nothing to export.")
    members = _group_members(store, conversation, messages)
    if kind == "markdown":
        mode = GROUP_MODE_WORDS.get(conversation.get("group_mode")) if members else None
        text = conversation_to_markdown(conversation["title"], messages, members=[m["persona_name"] for m in members], mode=mode)
    else:
        group = {"members": members, "mode": conversation.get("group_mode")} if members else None
        text = conversation_to_openai_jsonl(messages, group=group)
    return atomic_write_bytes(out_path, text.encode("utf-8"))
