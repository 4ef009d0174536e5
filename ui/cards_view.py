"""Character cards on the page: import a card file as a persona, export a persona as a card
or bundle, and export a conversation, each through one `core.persona_cards` call.

Imports need the model only when the file carries a LoRA adapter (to check that it fits), so
a plain card imports while the model is still loading. Exports are written under
`$CHORUS_HOME/exports/<random>/` (served to the browser through a download button; folders
older than an hour are removed on the next export), named after the persona or conversation.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from core.errors import ChorusError, NotFound
from core.persona_cards import export_conversation, export_leaves_adapter_behind, export_persona, import_card
from core.runtime import ModelLoading
from ui import notify

NEW = "__new__"  # the persona editor's "+ New persona" choice
IMPORT_TYPES = [".png", ".json", ".charx", ".zip"]
PERSONA_FORMATS = [("Bundle with adapter (.charx)", ".charx"), ("PNG card (.png)", ".png"),
                   ("Character card V2 (.json)", ".json")]
CONVERSATION_FORMATS = [("Markdown (.md)", ".md"), ("OpenAI chat JSONL (.jsonl)", ".jsonl")]
SOURCE_LABELS = {"json-v1": "JSON card (V1)", "json-v2": "JSON card (V2)", "json-v3": "JSON card (V3)",
                 "png-ccv3": "PNG card (V3)", "png-chara": "PNG card (V2)", "charx": "CHARX bundle"}
EXPORT_KEEP_S = 3600
STEM_MAX = 60


def exports_root(home) -> Path:
    return Path(home) / "exports"


def safe_stem(name: str | None, fallback: str) -> str:
    """A file name (without extension) from a persona name or title: letters, digits, `-`, `_`."""
    stem = re.sub(r"[^\w-]+", "-", name or "").strip("-_")[:STEM_MAX].strip("-_")
    return stem or fallback


def _prune(root: Path) -> None:
    cutoff = time.time() - EXPORT_KEEP_S
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def export_target(home, stem: str, ext: str) -> Path:
    """A fresh path `$CHORUS_HOME/exports/<random>/<stem><ext>` (its folder exists)."""
    root = exports_root(home)
    root.mkdir(parents=True, exist_ok=True)
    _prune(root)
    folder = root / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder / f"{stem}{ext}"


def _hidden_download():
    return gr.update(value=None, visible=False)


class CardsView:
    def __init__(self, runtime, chat_view, choices=None):
        self.runtime = runtime
        self.store = runtime.store
        self.chat = chat_view
        self.choices = choices  # the persona editor's dropdown choices, after an import

    # import --------------------------------------------------------------------------

    def _base_unavailable(self):
        """Stands in for the base model's identity while it is not loaded (called only for adapters)."""
        if self.runtime.error is not None:
            raise ChorusError(f"This file carries a LoRA adapter, which is checked against the model, and the "
                              f"model failed to load: {self.runtime.error}")
        last = self.runtime.progress[-1] if self.runtime.progress else "starting"
        raise ModelLoading(f"This file carries a LoRA adapter, which is checked against the model, and the model "
                           f"is still loading ({last}). Try again in a moment; nothing was imported.")

    def import_file(self, upload, state):
        """Import the uploaded card; select it in the editor and refresh the persona picker."""
        if not upload:
            return gr.skip(), gr.skip()
        path = Path(getattr(upload, "name", upload))
        filename = path.name  # Gradio keeps the original name as the last part of the upload path
        engine = self.runtime.chat.engine if self.runtime.ready else None
        try:
            report = import_card(self.store, path, base=None if engine else self._base_unavailable,
                                 engine=engine, filename=filename)
        except ChorusError as exc:
            raise notify.error(f"{filename} was not imported: {exc}") from None
        except Exception as exc:  # a hostile file must end in a message, never a traceback on the page
            traceback.print_exc(file=sys.stderr)
            raise notify.error(f"{filename} could not be read as a character card ({type(exc).__name__}); "
                               "nothing was imported.") from None
        what = SOURCE_LABELS.get(report.source_format, "card")
        note = f"Imported {report.name} from {filename} ({what})"
        note += f", with its LoRA adapter (version {report.adapter_version})." if report.adapter_version else "."
        notify.info(note)
        for warning in report.warnings:
            notify.warning(warning)
        state = self.chat.fix_state(state)
        return gr.update(choices=self.choices(), value=report.persona_id), self.chat.picker(state)

    # export --------------------------------------------------------------------------

    def export_persona(self, persona_id, ext):
        if not persona_id or persona_id == NEW:
            raise notify.error("Save the persona first; only saved personas can be exported.")
        try:
            persona = self.store.personas.get(persona_id)
        except NotFound as exc:
            raise notify.error(str(exc)) from None
        out = export_target(self.store.home, safe_stem(persona["name"], "persona"), ext or ".charx")
        try:
            behind = export_leaves_adapter_behind(self.store, persona_id, out)
            export_persona(self.store, persona_id, out)
        except ChorusError as exc:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise notify.error(f"{persona['name']} was not exported: {exc}") from None
        if behind:
            kind = "PNG card" if out.suffix == ".png" else "JSON card"
            notify.warning(f"{persona['name']}'s LoRA adapter is not in the {kind}: only a .charx bundle carries it. "
                           "Other apps read the card alone.")
        return gr.update(value=str(out), label=f"Download {out.name}", visible=True)

    def export_conversation(self, ext, state):
        state = self.chat.fix_state(state)
        if not state.get("conv"):
            raise notify.error("Open or start a conversation first; a new chat is saved with your first message.")
        try:
            conv = self.store.conversations.get(state["conv"])
        except NotFound as exc:
            raise notify.error(str(exc)) from None
        out = export_target(self.store.home, safe_stem(conv.get("title"), "conversation"), ext or ".md")
        try:
            export_conversation(self.store, state["conv"], out)
        except ChorusError as exc:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise notify.error(str(exc)) from None
        return gr.update(value=str(out), label=f"Download {out.name}", visible=True)

    # layout and wiring -----------------------------------------------------------------

    def build_persona_controls(self):
        """Import and export in the persona editor (inside its left column)."""
        c = SimpleNamespace()
        with gr.Accordion("Import / export a character card", open=True, elem_id="pe-cards"):
            c.upload = gr.UploadButton("Import a card (PNG, JSON, CHARX, ZIP)", file_count="single",
                                       file_types=IMPORT_TYPES, type="filepath", size="sm", elem_id="pe-import")
            with gr.Group(visible=False, elem_id="pe-export-group") as c.export_group:
                c.format = gr.Dropdown(choices=PERSONA_FORMATS, value=".charx", label="Export this persona as",
                                       elem_id="pe-export-format")
                c.export = gr.Button("Export", size="sm", elem_id="pe-export")
            c.download = gr.DownloadButton("Download", visible=False, size="sm", variant="primary",
                                           elem_id="pe-export-download")
        return c

    def build_conversation_controls(self):
        """Conversation export, in the conversation list's rename/delete area."""
        c = SimpleNamespace()
        with gr.Row(equal_height=True):
            c.format = gr.Dropdown(choices=CONVERSATION_FORMATS, value=".md", show_label=False, scale=3,
                                   container=False, elem_id="ch-conv-export-format")
            c.export = gr.Button("Export", size="sm", scale=1, elem_id="ch-conv-export")
        c.download = gr.DownloadButton("Download", visible=False, size="sm", variant="primary",
                                       elem_id="ch-conv-download")
        return c

    def wire_persona_controls(self, c, pick, state, picker_html):
        """Import and export; the persona editor shows `c.export_group` for saved personas."""
        c.upload.upload(self.import_file, [c.upload, state], [pick, picker_html],
                        concurrency_id="generate", show_progress="minimal")
        c.export.click(self.export_persona, [pick, c.format], [c.download])
        hide = dict(fn=_hidden_download, inputs=None, outputs=[c.download], queue=False, show_progress="hidden")
        pick.change(**hide)
        c.format.change(**hide)

    def wire_conversation_controls(self, c, state, *changes):
        """`changes`: events after which the shown conversation may differ (the download is hidden)."""
        c.export.click(self.export_conversation, [c.format, state], [c.download])
        c.format.change(_hidden_download, None, [c.download], queue=False, show_progress="hidden")
        for event in changes:
            event(_hidden_download, None, [c.download], queue=False, show_progress="hidden")
