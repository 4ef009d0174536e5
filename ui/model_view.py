"""The "Model" control under the status line: switch the served base model to one already
on this machine (the picker lists `$CHORUS_HOME/models` and the Hugging Face cache) or to
one named by hub id or folder. The switch runs in the background (core/runtime.py); the
status line shows its progress, and the page keeps working meanwhile.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from core.errors import ChorusError
from core.model_catalog import CHOICE_FILE, cached_models
from ui import notify
from ui.render import esc


class ModelView:
    def __init__(self, runtime):
        self.runtime = runtime

    def choices(self) -> list[tuple[str, str]]:
        """(label, --model value) of every model that loads without a download."""
        return [(m.label, m.spec) for m in cached_models(self.runtime.store.home)]

    def refresh(self):
        return gr.update(choices=self.choices())

    def switch(self, picked: str | None, typed: str | None):
        """Start the switch to the typed name, else the picked one; the status line follows it."""
        spec = (typed or "").strip() or (picked or "")
        if not spec:
            raise notify.error("Pick a cached model, or type a hub id (org/name) or a model folder.")
        try:
            self.runtime.switch_model(spec)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        note = (f"Switch to <b>{esc(spec)}</b> started in the background: the status line shows its progress. "
                f"Once it has loaded, it is remembered for the next start in {esc(self.runtime.store.home / CHOICE_FILE)}.")
        return f'<div class="ch-model-note">{note}</div>', ""

    def build(self) -> SimpleNamespace:
        c = SimpleNamespace()
        with gr.Accordion("Model", open=False, elem_id="ch-model") as c.accordion:
            with gr.Row(equal_height=True):
                c.pick = gr.Dropdown(label="Models on this machine", choices=self.choices(), value=None,
                                     elem_id="ch-model-pick", scale=2)
                c.name = gr.Textbox(label="Or a hub id (org/name) or a model folder", max_lines=1,
                                    placeholder="Qwen/Qwen2.5-1.5B-Instruct", elem_id="ch-model-name", scale=2)
                c.switch = gr.Button("Switch model", variant="secondary", elem_id="ch-model-switch", scale=1)
            c.note = gr.HTML("", elem_id="ch-model-note")
        return c

    def wire(self, c: SimpleNamespace) -> None:
        for event in (c.switch.click, c.name.submit):
            event(self.switch, [c.pick, c.name], [c.note, c.name], show_progress="hidden")
        c.accordion.expand(self.refresh, None, c.pick, queue=False, show_progress="hidden")
