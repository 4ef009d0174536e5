"""The persona editor: create, edit and delete personas (card fields, avatar) and attach
or remove a LoRA adapter; import a character card, export a persona (`ui/cards_view.py`).
An adapter is checked against the running model before anything is saved, so a refused
adapter leaves the persona exactly as it was."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from core.errors import ChorusError, NotFound
from ui import notify, uploads
from ui.cards_view import NEW, CardsView
from ui.render import md_escape

FIELDS = ("name", "tagline", "description", "personality", "scenario", "greeting", "example_dialogue", "system_prompt")


class PersonasView:
    def __init__(self, runtime, chat_view):
        self.runtime = runtime
        self.store = runtime.store
        self.chat = chat_view
        self.cards = CardsView(runtime, chat_view, choices=self.choices)

    def choices(self) -> list[tuple[str, str]]:
        return [("+ New persona", NEW)] + [(p["name"], p["id"]) for p in self.store.personas.list()]

    def adapter_info(self, persona: dict | None) -> str:
        if not persona:
            return "Save the persona first, or attach an adapter together with the first save."
        row = self.store.current_adapter(persona)
        if row is None:
            return "**Adapter:** none. Replies come from the card alone (the bare base model)."
        size = row.get("size_bytes") or 0
        return (f"**Adapter:** version {row['version']}, LoRA rank {row['rank']}, {size / 1024**2:.1f} MB, "
                f"for `{row.get('base_model') or 'unknown base'}`.")

    def load(self, persona_id):
        """Fill the form with a persona (or empty it for a new one)."""
        persona = None
        if persona_id and persona_id != NEW:
            try:
                persona = self.store.personas.get(persona_id)
            except NotFound as exc:
                raise notify.error(str(exc)) from None
        values = [(persona or {}).get(f, "") or "" for f in FIELDS]
        avatar = self.store.personas.avatar_path(persona) if persona else None
        exists = persona is not None
        return (*values, str(avatar) if avatar else None, False, None, self.adapter_info(persona),
                gr.update(visible=exists), gr.update(visible=exists and bool(persona.get("adapter_id"))),
                gr.update(visible=exists), gr.update(visible=False), gr.update(visible=exists))

    def _check_adapter(self, files):
        """Unpack and check an uploaded adapter against the model; returns its folder or None."""
        if not files:
            return None
        if not self.runtime.ready:
            if self.runtime.error is not None:
                raise notify.error(f"Adapters are checked against the model, which failed to load: {self.runtime.error}")
            raise notify.error("The model is still loading, and adapters are checked against it. "
                           "Try again in a moment; nothing was saved.")
        folder = uploads.prepare_adapter(files, self.store.home)
        try:
            self.runtime.chat.engine.check_adapter(folder)
        except BaseException:
            uploads.discard(folder)
            raise
        return folder

    def save(self, persona_id, *rest):
        *values, avatar, avatar_dirty, files, state = rest
        fields = dict(zip(FIELDS, values))
        folder = None
        try:
            folder = self._check_adapter(files)  # before anything is written
            avatar_bytes = uploads.read_avatar(avatar) if avatar_dirty and avatar else None
            if persona_id and persona_id != NEW:
                persona = self.store.personas.update(persona_id, fields)
            else:
                persona = self.store.personas.create(fields)
            if avatar_dirty:
                persona = self.store.personas.set_avatar(persona["id"], avatar_bytes)
            note = f"Saved {persona['name']}."
            if folder is not None:
                try:
                    row = self.runtime.chat.attach_adapter(persona["id"], folder)
                    note += f" Adapter version {row['version']} attached."
                except ChorusError as exc:
                    raise notify.error(f"{persona['name']} was saved, but the adapter was refused: {exc}") from None
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        finally:
            uploads.discard(folder)
        notify.info(note)
        persona = self.store.personas.get(persona["id"])
        state = self.chat.fix_state(state)
        return (gr.update(choices=self.choices(), value=persona["id"]), self.adapter_info(persona), None, False,
                gr.update(visible=True), gr.update(visible=bool(persona.get("adapter_id"))), gr.update(visible=True),
                self.chat.picker(state), self.chat.active(state), gr.update(visible=True))

    def remove_adapter(self, persona_id, state):
        if not persona_id or persona_id == NEW:
            raise notify.error("Pick a persona first.")
        try:
            if self.runtime.ready:
                self.runtime.chat.detach_adapter(persona_id)
            else:
                self.store.personas.set_adapter(persona_id, None)
            persona = self.store.personas.get(persona_id)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        notify.info(f"{persona['name']} now speaks without an adapter (earlier versions stay on disk).")
        state = self.chat.fix_state(state)
        return self.adapter_info(persona), gr.update(visible=False), self.chat.picker(state)

    def ask_delete(self, persona_id):
        try:
            persona = self.store.personas.get(persona_id)
        except (NotFound, TypeError):
            raise notify.error("Pick a saved persona first.") from None
        text = (f"Delete **{md_escape(persona['name'])}** and its adapters? Conversations keep its past replies, "
                "labelled with its name. This cannot be undone.")
        return gr.update(visible=True), text

    def delete(self, persona_id, state):
        try:
            if self.runtime.ready:
                row = self.runtime.chat.delete_persona(persona_id)
            else:
                row = self.store.delete_persona(persona_id)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        notify.info(f"Deleted {row['name']}.")
        state = self.chat.fix_state(state)
        return (gr.update(choices=self.choices(), value=NEW), gr.update(visible=False), state,
                self.chat.picker(state), self.chat.active(state), self.chat.transcript(state))

    def start_chat(self, persona_id, state, request: gr.Request):
        """The greeting opens a new conversation with this persona, in the Chat tab."""
        persona = self.chat.persona(persona_id)
        if persona is None:
            raise notify.error("Save the persona first.")
        state = self.chat.fix_state(state)
        if state.get("persona") != persona_id and request is not None:
            self.chat.sessions.note_switch(request.session_hash, persona)
        state = {**state, "conv": None, "persona": persona_id}
        return (state, gr.Tabs(selected="chat"), self.chat.transcript(state), self.chat.picker(state),
                self.chat.active(state), self.chat.conv_list(state))

    def build(self):
        c = SimpleNamespace()
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                c.pick = gr.Dropdown(choices=self.choices(), value=NEW, label="Persona to edit", elem_id="pe-pick")
                c.avatar = gr.Image(type="filepath", label="Avatar", height=200, elem_id="pe-avatar",
                                    sources=["upload", "clipboard"])
                c.avatar_dirty = gr.State(False)
                c.adapter_info = gr.Markdown(self.adapter_info(None), elem_id="pe-adapter-info")
                c.files = gr.File(label="Attach a LoRA adapter: a zip, or adapter_config.json + adapter_model.safetensors",
                                  file_count="multiple", file_types=[".zip", ".json", ".safetensors"], elem_id="pe-files")
                c.remove_adapter = gr.Button("Remove adapter", size="sm", visible=False, elem_id="pe-remove-adapter")
                c.cards = self.cards.build_persona_controls()
            with gr.Column(scale=3):
                c.name = gr.Textbox(label="Name", max_lines=1, elem_id="pe-name")
                c.tagline = gr.Textbox(label="One-line description (shown in the persona picker)", max_lines=1,
                                       elem_id="pe-tagline")
                c.description = gr.Textbox(label="Description", lines=3, elem_id="pe-description")
                c.personality = gr.Textbox(label="Personality", lines=2, elem_id="pe-personality")
                c.scenario = gr.Textbox(label="Scenario", lines=2, elem_id="pe-scenario")
                c.greeting = gr.Textbox(label="Greeting (opens every new conversation)", lines=2, elem_id="pe-greeting")
                c.example_dialogue = gr.Textbox(label="Example dialogue ({{user}}: ... / {{char}}: ...)", lines=4,
                                                elem_id="pe-examples")
                with gr.Accordion("Advanced: system prompt", open=False):
                    c.system_prompt = gr.Textbox(label="System prompt (optional; replaces the default)", lines=3,
                                                 elem_id="pe-system")
                with gr.Row():
                    c.save = gr.Button("Save persona", variant="primary", elem_id="pe-save")
                    c.chat = gr.Button("Start a chat with this persona", visible=False, elem_id="pe-chat")
                    c.delete = gr.Button("Delete persona", variant="stop", visible=False, elem_id="pe-delete")
                with gr.Group(visible=False, elem_id="pe-confirm") as c.confirm:
                    c.confirm_text = gr.Markdown()
                    with gr.Row():
                        c.yes = gr.Button("Yes, delete", variant="stop", size="sm", elem_id="pe-yes")
                        c.no = gr.Button("Cancel", size="sm", elem_id="pe-no")
        return c

    def wire(self, c, state, tabs, chat, convlist):
        fields = [getattr(c, f) for f in FIELDS]
        c.pick.change(self.load, [c.pick], [*fields, c.avatar, c.avatar_dirty, c.files, c.adapter_info,
                                            c.delete, c.remove_adapter, c.chat, c.confirm, c.cards.export_group])
        c.avatar.upload(lambda: True, None, c.avatar_dirty)
        c.avatar.clear(lambda: True, None, c.avatar_dirty)
        c.save.click(self.save, [c.pick, *fields, c.avatar, c.avatar_dirty, c.files, state],
                     [c.pick, c.adapter_info, c.files, c.avatar_dirty, c.delete, c.remove_adapter, c.chat,
                      chat.picker_html, chat.active, c.cards.export_group],
                     concurrency_id="generate")
        c.remove_adapter.click(self.remove_adapter, [c.pick, state], [c.adapter_info, c.remove_adapter, chat.picker_html],
                               concurrency_id="generate")
        c.delete.click(self.ask_delete, [c.pick], [c.confirm, c.confirm_text])
        c.no.click(lambda: gr.update(visible=False), None, [c.confirm])
        c.yes.click(self.delete, [c.pick, state], [c.pick, c.confirm, state, chat.picker_html, chat.active, chat.transcript],
                    concurrency_id="generate")
        c.chat.click(self.start_chat, [c.pick, state], [state, tabs, chat.transcript, chat.picker_html, chat.active, convlist])
        self.cards.wire_persona_controls(c.cards, c.pick, state, chat.picker_html)
