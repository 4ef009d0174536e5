"""The Chorus page: layout and wiring. Each area lives in its own module (chat,
conversations, personas, status); this module places them and connects them.

Tabs: Chat (group chats: `ui/group_view.py`), Personas, Train (`ui/training_view.py`). Card import/export lives in the
persona editor and the conversation list (`ui/cards_view.py`); the model switch sits under
the status line (`ui/model_view.py`).
"""

from __future__ import annotations

import gradio as gr

from ui.assets import CSS, PICK_JS
from ui.cards_view import exports_root
from ui.chat_view import ChatView
from ui.conversations_view import ConversationsView
from ui.model_view import ModelView
from ui.personas_view import PersonasView
from ui.session import Sessions, new_state
from ui.status import note_pick, note_shown, status_html
from ui.training_view import TrainingView

STATUS_EVERY_S = 2.0


def launch_options(runtime) -> dict:
    """What `launch()` needs for this page: its CSS, and the folders it may serve (avatars, exports)."""
    folders = [runtime.store.home / "avatars", exports_root(runtime.store.home)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return {"css": CSS, "allowed_paths": [str(f) for f in folders]}


def build(runtime) -> gr.Blocks:
    sessions = Sessions()  # per-app, keyed by session: stop flags, last persona switch
    chat = ChatView(runtime, sessions)
    convs = ConversationsView(runtime, chat)
    personas = PersonasView(runtime, chat)
    training = TrainingView(runtime, chat, personas)
    model = ModelView(runtime)

    def status(request: gr.Request = None):
        names = {p["id"]: p["name"] for p in runtime.store.personas.list()}
        return status_html(runtime, names, sessions.last_switch(getattr(request, "session_hash", None)))

    with gr.Blocks(title="Chorus", analytics_enabled=False) as demo:
        state = gr.State(new_state(None))
        with gr.Row(equal_height=True):
            gr.Markdown("# Chorus", elem_id="ch-title")
            status_box = gr.HTML(status(), elem_id="ch-status", js_on_load=None)
        mv = model.build()
        timer = gr.Timer(STATUS_EVERY_S)
        with gr.Tabs(elem_id="ch-tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=270):
                        new_chat = gr.Button("+ New chat", variant="secondary", elem_id="ch-new")
                        gv = chat.groups.build_panel()
                        gr.Markdown("**Personas**")
                        picker = gr.HTML(elem_id="ch-personas-list", js_on_load=PICK_JS)
                        gr.Markdown("**Conversations**")
                        cv = convs.build()
                    with gr.Column(scale=3):
                        c = chat.build()
                        c.picker_html = picker
            with gr.Tab("Personas", id="personas", elem_id="tab-personas") as personas_tab:
                pv = personas.build()
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_tab:
                tv = training.build()

        chat.wire(c, state, picker, cv.list)
        chat.groups.wire(gv, c, state, cv.list)
        new_chat.click(chat.new_chat, [state], [state, c.transcript, cv.list, c.box])
        picker.click(note_pick(sessions, chat), None, None, queue=False, show_progress="hidden")
        convs.wire(cv, state, c, new_chat)
        personas.wire(pv, state, tabs, c, cv.list)
        training.wire(tv, state, tabs, c, cv.list)
        # personas made elsewhere (training, another tab) appear in the editor's list
        personas_tab.select(lambda: gr.update(choices=personas.choices()), None, pv.pick, queue=False)
        train_tab.select(lambda: gr.update(choices=training.targets()), None, tv.target, queue=False)
        timer.tick(status, None, status_box, show_progress="hidden", queue=False)
        model.wire(mv)
        demo.load(note_shown(sessions, chat), [state], None, queue=False, show_progress="hidden")
        demo.load(chat.refresh, [state], [state, c.transcript, picker, c.active, cv.list], show_progress="hidden")
    return demo
