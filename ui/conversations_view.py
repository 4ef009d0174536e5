"""The conversation list: every saved conversation (title, personas, last activity),
reopened exactly as saved; rename, export (Markdown or OpenAI JSONL), and delete after a
confirmation."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from core.errors import ChorusError, NotFound
from ui import notify
from ui.assets import PICK_JS
from ui.cards_view import CardsView
from ui.render import md_escape


class ConversationsView:
    def __init__(self, runtime, chat_view):
        self.store = runtime.store
        self.chat = chat_view
        self.cards = CardsView(runtime, chat_view)

    def open(self, state, request: gr.Request, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        if data.get("act") != "open":
            return (gr.skip(),) * 6
        conv_id = data.get("id")
        try:
            conv = self.store.conversations.get(conv_id)
            path = self.store.conversations.path(conv_id)
        except NotFound as exc:
            raise notify.error(str(exc)) from None
        state = {**self.chat.fix_state(state), "conv": conv_id}
        before = state.get("persona")
        # Carry on with the persona who spoke last, if it still exists.
        for msg in reversed(path):
            if msg["role"] == "assistant" and self.chat.persona(msg.get("persona_id")) is not None:
                state["persona"] = msg["persona_id"]
                break
        if state["persona"] != before and request is not None:
            self.chat.sessions.note_switch(request.session_hash, self.chat.persona(state["persona"]))
        return (state, self.chat.transcript(state), self.chat.picker(state), self.chat.active(state),
                self.chat.conv_list(state), gr.update(value=conv.get("title") or ""))

    def rename(self, title, state):
        state = self.chat.fix_state(state)
        if not state.get("conv"):
            raise notify.error("Open or start a conversation first; a new chat gets its title from your first message.")
        try:
            self.store.conversations.rename(state["conv"], title or "")
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        notify.info("Conversation renamed.")
        return self.chat.conv_list(state)

    def ask_delete(self, state):
        state = self.chat.fix_state(state)
        if not state.get("conv"):
            raise notify.error("There is no saved conversation open to delete.")
        title = self.store.conversations.get(state["conv"]).get("title") or "this conversation"
        return gr.update(visible=True), gr.update(value=f"Delete **{md_escape(title)}** and all its messages? This cannot be undone.")

    def delete(self, state):
        state = self.chat.fix_state(state)
        if state.get("conv"):
            try:
                self.store.conversations.delete(state["conv"])
            except ChorusError as exc:
                raise notify.error(str(exc)) from None
        state = {**state, "conv": None}
        return state, self.chat.transcript(state), self.chat.conv_list(state), gr.update(visible=False), ""

    def build(self):
        c = SimpleNamespace()
        c.list = gr.HTML(elem_id="ch-convlist", js_on_load=PICK_JS)
        with gr.Accordion("Rename or delete · export", open=False, elem_id="ch-conv-manage"):
            with gr.Row(equal_height=True):
                c.title = gr.Textbox(show_label=False, placeholder="New title", scale=3, elem_id="ch-conv-title")
                c.rename = gr.Button("Rename", size="sm", scale=1, elem_id="ch-conv-rename")
            c.export = self.cards.build_conversation_controls()
            c.delete = gr.Button("Delete conversation", size="sm", variant="stop", elem_id="ch-conv-delete")
            with gr.Group(visible=False, elem_id="ch-conv-confirm") as c.confirm:
                c.confirm_text = gr.Markdown()
                with gr.Row():
                    c.yes = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="ch-conv-yes")
                    c.no = gr.Button("Cancel", size="sm", elem_id="ch-conv-no")
        return c

    def wire(self, c, state, chat, new_chat=None):
        c.list.click(self.open, [state], [state, chat.transcript, chat.picker_html, chat.active, c.list, c.title],
                     show_progress="hidden")
        c.rename.click(self.rename, [c.title, state], [c.list])
        c.title.submit(self.rename, [c.title, state], [c.list])
        c.delete.click(self.ask_delete, [state], [c.confirm, c.confirm_text])
        c.no.click(lambda: gr.update(visible=False), None, [c.confirm])
        c.yes.click(self.delete, [state], [state, chat.transcript, c.list, c.confirm, c.title])
        changes = [c.list.click, c.yes.click] + ([new_chat.click] if new_chat is not None else [])
        self.cards.wire_conversation_controls(c.export, state, *changes)
