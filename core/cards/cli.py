"""`import`, `export` and `export-conversation` from the terminal.

This is the command-line edge: each command prints a short summary on stdout (or, for
`import --json`, one JSON object) with warnings and notes on stderr, returns 0, or prints one
`error:` line on stderr and returns 2, never a traceback. `app.py` parses the arguments and calls these functions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import ChorusError

_FORMAT_NAMES = {
    "json-v1": "a V1 card JSON",
    "json-v2": "a V2 card JSON",
    "json-v3": "a V3 card JSON",
    "png-ccv3": "a PNG card (V3)",
    "png-chara": "a PNG card (V2)",
    "charx": "a .charx bundle",
}


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(what: str, work) -> int:
    try:
        return work()
    except ChorusError as exc:
        _err(f"error: {exc}")
    except Exception as exc:  # a bug, but the user still gets one line, not a traceback
        _err(f"error: Chorus failed to {what} ({type(exc).__name__}: {exc}). Please report this.")
    return 2


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{max(1, round(n / 1024))} KB"


def import_command(path: str, as_json: bool = False, model_spec: str | None = None) -> int:
    """Import a card or bundle as a new persona. The base model (`model_spec`, default the
    embedded one) is only looked at when the file carries an adapter; its weights are never loaded."""
    from core.persona_cards import base_identity_for_model, import_card
    from storage.store import Store

    def work() -> int:
        store = Store()
        # Progress of a first-launch conversion goes to stderr so that --json stays one object.
        base = lambda: base_identity_for_model(model_spec, store.home, progress=_err)  # noqa: E731
        report = import_card(store, path, base=base)
        if as_json:
            print(json.dumps(report.as_dict(), ensure_ascii=False))
            return 0
        print(f"Imported {report.name!r} as persona {report.persona_id} "
              f"(from {_FORMAT_NAMES.get(report.source_format, report.source_format)}).")
        print(f"Avatar:  {'yes' if report.has_avatar else 'none'}")
        print(f"Adapter: v{report.adapter_version}" if report.adapter_version else "Adapter: none")
        for note in report.warnings:  # diagnostics, not the answer: stderr (as --json keeps them in the object)
            _err(f"Warning: {note}")
        return 0

    return _run(f"import {path!r}", work)


def export_command(persona: str, out: str) -> int:
    """Export a persona by id or name; the format follows `out`'s extension (.charx/.zip, .png, .json)."""
    from core.persona_cards import export_leaves_adapter_behind, export_persona
    from storage.store import Store

    def work() -> int:
        store = Store()
        row = store.personas.find(persona)
        adapter = store.current_adapter(row)
        left_behind = export_leaves_adapter_behind(store, row["id"], out)
        written = export_persona(store, row["id"], out)
        parts = ["card"]
        if store.personas.avatar_path(row) and Path(out).suffix.lower() != ".json":
            parts.append("avatar")
        if adapter and not left_behind:
            parts.append(f"adapter v{adapter['version']}")
        print(f"Exported {row['name']!r} to {written} ({', '.join(parts)}; {_size(written)}).")
        if left_behind:
            _err("Note: a .png or .json card cannot carry the persona's adapter; export to .charx to include it.")
        return 0

    return _run(f"export {persona!r}", work)


def export_conversation_command(conversation_id: str, out: str) -> int:
    """Export a conversation's shown branch as Markdown (.md) or OpenAI chat JSONL (.jsonl)."""
    from core.persona_cards import export_conversation
    from storage.store import Store

    def work() -> int:
        store = Store()
        written = export_conversation(store, conversation_id, out)
        print(f"Exported conversation {conversation_id} to {written} ({_size(written)}).")
        return 0

    return _run(f"export the conversation {conversation_id!r}", work)
