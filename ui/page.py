"""A minimal chat page (placeholder until the full chat UI lands): pick a persona, talk."""

from __future__ import annotations

import gradio as gr

from core.errors import ChorusError


def build(runtime) -> gr.Blocks:
    personas = runtime.store.personas.list()
    choices = [(p["name"], p["id"]) for p in personas]

    def respond(message, history, persona_id, conv_id):
        try:
            chat = runtime.chat
            if not conv_id:
                conv_id = chat.start_conversation(persona_id)["id"]
            history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            for event in chat.send(conv_id, persona_id, message):
                if event.kind == "delta":
                    history[-1]["content"] += event.text
                    yield history, conv_id, ""
            yield history, conv_id, ""
        except ChorusError as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title="Chorus") as demo:
        gr.Markdown("# Chorus")
        persona = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None, label="Persona")
        conv = gr.State(None)
        bot = gr.Chatbot(type="messages") if "type" in gr.Chatbot.__init__.__code__.co_varnames else gr.Chatbot()
        box = gr.Textbox(placeholder="Say something")
        box.submit(respond, [box, bot, persona, conv], [bot, conv, box])
    return demo
