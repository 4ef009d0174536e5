"""The chat area: the active persona, the transcript, the message box, Stop/Regenerate,
message actions (swipe, edit, delete, copy) and the sampling settings. A group chat's
rounds, its reply-mode control and the "New group chat" panel live in `ui/group_view.py`.

Handlers read the session's `gr.State` ({conv, persona}), call one chat-service method
and render the result from the store, so what is shown is always what is saved.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from core.engine import GenerationSettings
from core.errors import ChorusError, NotFound
from core.prompting import fill_placeholders
from ui import notify, render
from ui.assets import CLICK_JS, SCROLL_JS
from ui.group_view import GroupView

STREAM_EVERY_S = 0.05  # at most ~20 transcript updates a second while a reply streams
LOADING_POLL_S = 0.5


class ChatView:
    def __init__(self, runtime, sessions):
        self.runtime = runtime
        self.store = runtime.store
        self.sessions = sessions
        self.groups = GroupView(self)

    # reading the store ---------------------------------------------------------

    def avatars(self) -> dict[str, str]:
        out = {}
        for p in self.store.personas.list():
            path = self.store.personas.avatar_path(p)
            if path is not None:
                out[p["id"]] = render.file_url(path)
        return out

    def persona(self, persona_id: str | None) -> dict | None:
        if not persona_id:
            return None
        try:
            return self.store.personas.get(persona_id)
        except NotFound:
            return None

    def default_persona(self) -> str | None:
        personas = self.store.personas.list()
        return personas[0]["id"] if personas else None

    def fix_state(self, state: dict) -> dict:
        """Drop a conversation or persona that was deleted (in another tab, say)."""
        state = dict(state or {})
        if state.get("conv"):
            try:
                self.store.conversations.get(state["conv"])
            except NotFound:
                state["conv"] = None
        if self.persona(state.get("persona")) is None:
            state["persona"] = self.default_persona()
        return state

    def transcript(self, state: dict, notice: str = "", pending: dict | None = None) -> str:
        """The shown branch (or, for a new chat, the persona's greeting as a preview)."""
        avatars = self.avatars()
        extra = [pending] if pending else []
        group = self.groups.conv(state)
        if group is not None:
            return render.transcript_html(self.group_path(group["id"]) + extra, avatars, notice=notice,
                                          placeholder=self.groups.placeholder(group))
        if state.get("conv"):
            path = self.store.conversations.path(state["conv"])
            return render.transcript_html(path + extra, avatars, notice=notice)
        persona = self.persona(state.get("persona"))
        greeting = (persona or {}).get("greeting", "").strip()
        preview = []
        if greeting:
            preview = [{"role": "assistant", "content": fill_placeholders(greeting, persona["name"]),
                        "persona_id": persona["id"], "persona_name": persona["name"], "meta": {"greeting": True}}]
        return render.transcript_html(preview + extra, avatars, notice=notice, preview=True)

    def group_path(self, conversation_id: str) -> list[dict]:
        """A group chat's shown branch, its replies marked as a group's (delete keeps the others)."""
        return [{**m, "in_group": True} for m in self.store.conversations.path(conversation_id)]

    def picker(self, state: dict) -> str:
        return render.persona_cards_html(self.store.personas.list(), self.avatars(), state.get("persona"))

    def active(self, state: dict) -> str:
        group = self.groups.conv(state)
        if group is not None:
            return self.groups.active(group)
        persona = self.persona(state.get("persona"))
        return render.active_persona_html(persona, self.avatars().get(persona["id"]) if persona else None)

    def conv_list(self, state: dict) -> str:
        names = {p["id"]: p["name"] for p in self.store.personas.list()}
        return render.conversation_list_html(self.store.conversations.list(), state.get("conv"), names)

    def refresh(self, state):
        """Everything the chat tab shows, for page load and after changes elsewhere."""
        state = self.fix_state(state)
        return state, self.transcript(state), self.picker(state), self.active(state), self.conv_list(state)

    # simple handlers -------------------------------------------------------------

    def pick_persona(self, state, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        if data.get("act") != "persona" or self.persona(data.get("id")) is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        state = {**self.fix_state(state), "persona": data["id"]}
        return state, self.transcript(state), self.picker(state), self.active(state)

    def new_chat(self, state):
        state = {**self.fix_state(state), "conv": None}
        return state, self.transcript(state), self.conv_list(state), ""

    def stop(self, request: gr.Request):
        self.sessions.stop(request.session_hash)

    # streaming -------------------------------------------------------------------

    @staticmethod
    def settings(temperature, top_p, max_new_tokens, seed) -> GenerationSettings:
        seed = None if seed in (None, "") or int(seed) < 0 else int(seed)
        try:
            return GenerationSettings(temperature=float(temperature), top_p=float(top_p),
                                      max_new_tokens=int(max_new_tokens), seed=seed)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None

    def _wait_for_model(self, state, stop, pending: dict | None):
        """While the model loads, show the queued message and the progress; True when ready."""
        while not self.runtime.ready:
            if self.runtime.error is not None:
                raise notify.error(str(self.runtime.error))
            if stop.is_set():
                return False
            last = self.runtime.progress[-1] if self.runtime.progress else "starting"
            switching = self.runtime.switching
            what = f"The model is switching to {switching}" if switching else "The model is still loading"
            notice = f"{what} ({last}). Your message is queued and goes out when it is ready; Stop cancels it."
            yield self.transcript(state, notice=notice, pending=pending), state
            time.sleep(LOADING_POLL_S)
        return True

    def _stream(self, state, request, start, *, pending_user: str | None = None, replacing_last: bool = False):
        """Run one reply: wait for the model if needed, start it with `start(chat, stop)`,
        and yield (transcript_html, state) as the text comes in."""
        session = request.session_hash if request else "no-session"
        stop = self.sessions.begin(session)
        events = None
        try:
            pending = {"role": "user", "content": pending_user, "id": ""} if pending_user else None
            ready = yield from self._wait_for_model(state, stop, pending)
            if not ready:
                yield self.transcript(state, notice="Stopped before the model was ready; your message was not sent."), state
                return
            chat = self.runtime.chat
            persona = self.persona(state.get("persona"))
            if persona is None:
                raise notify.error("Pick a persona first (the one shown was deleted).")
            if not state.get("conv"):
                state = {**state, "conv": chat.start_conversation(persona["id"])["id"]}
            events = start(chat, state["conv"], persona["id"], stop)
            path = self.store.conversations.path(state["conv"])
            if replacing_last and path and path[-1]["role"] == "assistant":
                path = path[:-1]
            avatars = self.avatars()
            rendered = [render.message_html(m, avatars) for m in path]
            reply = {"role": "assistant", "content": "", "persona_id": persona["id"], "persona_name": persona["name"]}
            yield render.transcript_html(path, avatars, streaming=reply, rendered=rendered), state
            shown = time.monotonic()
            for event in events:
                if event.kind == "delta":
                    reply["content"] += event.text
                    if time.monotonic() - shown >= STREAM_EVERY_S:
                        shown = time.monotonic()
                        yield render.transcript_html(path, avatars, streaming=reply, rendered=rendered), state
                elif event.kind == "warning":
                    notify.warning(event.text)
                elif event.kind == "info" and event.info.get("dropped_turns"):
                    notify.info(f"The oldest {event.info['dropped_turns']} turns were left out to fit the model's context.")
            yield self.transcript(state), state
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        finally:
            if events is not None:
                events.close()  # a reply cut short is saved by the core as it stands
            self.sessions.end(session, stop)

    def send(self, text, state, temperature, top_p, max_new_tokens, seed, request: gr.Request):
        text = (text or "").strip()
        state = self.fix_state(state)
        if not text:
            raise notify.error("The message is empty; type something first.")
        if self.sessions.busy(request.session_hash):
            raise notify.error("A reply is still being written in this tab; wait for it or press Stop.")
        settings = self.settings(temperature, top_p, max_new_tokens, seed)
        sent = False

        def start(chat, conv, persona_id, stop):
            nonlocal sent
            events = chat.send(conv, persona_id, text, settings, stop)
            sent = True
            return events

        def start_group(groups, conv, stops):
            nonlocal sent
            events = groups.send(conv, text, settings, stops)
            sent = True
            return events

        if self.groups.conv(state) is not None:
            stream = self.groups.stream(state, request, start_group, pending_user=text)
        else:
            stream = self._stream(state, request, start, pending_user=text)
        try:
            for html, state in stream:
                yield html, "", state, gr.skip()
        except gr.Error:
            yield gr.skip(), ("" if sent else text), state, gr.skip()  # an unsent message goes back in the box
            raise
        yield gr.skip(), ("" if sent else text), state, self.conv_list(state)

    def regenerate(self, state, temperature, top_p, max_new_tokens, seed, request: gr.Request, mid=None):
        state = self.fix_state(state)
        if not state.get("conv"):
            raise notify.error("There is nothing to regenerate yet; send a message first.")
        if self.sessions.busy(request.session_hash):
            raise notify.error("A reply is still being written in this tab; wait for it or press Stop.")
        settings = self.settings(temperature, top_p, max_new_tokens, seed)

        def start(chat, conv, persona_id, stop):
            return chat.regenerate(conv, persona_id, settings, stop)

        if self.groups.conv(state) is not None:
            path = self.store.conversations.path(state["conv"])
            target = int(mid) if mid else (path[-1]["id"] if path else None)
            speaker = next((m.get("persona_id") for m in path if m["id"] == target), None)

            def start_group(groups, conv, stops):
                return groups.regenerate(conv, target, settings, stops.get(speaker))

            stream = self.groups.stream(state, request, start_group, regen_of=target)
        else:
            stream = self._stream(state, request, start, replacing_last=True)
        for html, state in stream:
            yield html, state, gr.skip()
        yield gr.skip(), state, self.conv_list(state)

    def resend(self, mid, text, state, temperature, top_p, max_new_tokens, seed, request: gr.Request):
        """Save an edited user message as a new branch beside the old one, and reply to it."""
        state = self.fix_state(state)
        if not mid or not state.get("conv"):
            raise notify.error("That message is no longer there.")
        settings = self.settings(temperature, top_p, max_new_tokens, seed)

        def start(chat, conv, persona_id, stop):
            return chat.resend_edited(conv, int(mid), persona_id, text, settings, stop)

        def start_group(groups, conv, stops):
            return groups.resend_edited(conv, int(mid), text, settings, stops)

        if self.groups.conv(state) is not None:
            stream = self.groups.stream(state, request, start_group, pending_user=text)
        else:
            stream = self._stream(state, request, start)
        for html, state in stream:
            yield html, state, gr.skip(), gr.update(visible=False), None
        yield gr.skip(), state, self.conv_list(state), gr.update(visible=False), None

    # message actions -------------------------------------------------------------

    def on_message_action(self, state, temperature, top_p, max_new_tokens, seed, request: gr.Request, evt: gr.EventData):
        """Clicks inside the transcript: prev/next (swipe), edit, delete, regenerate."""
        data = getattr(evt, "_data", None) or {}
        act, mid = data.get("act"), data.get("id")
        state = self.fix_state(state)
        skip = (gr.skip(),) * 3
        if act not in ("regen", "prev", "next", "delete", "edit"):  # a member's Stop: handled by GroupView
            yield gr.skip(), gr.skip(), gr.skip(), *skip
            return
        try:
            if act == "regen":
                for html, state, convs in self.regenerate(state, temperature, top_p, max_new_tokens, seed, request, mid):
                    yield html, state, convs, *skip
                return
            mid = int(mid)
            msg = self.store.conversations.message(mid)
            if act in ("prev", "next"):
                path = {m["id"]: m for m in self.store.conversations.path(msg["conversation_id"])}
                row = path.get(mid)
                if row is not None:
                    step = -1 if act == "prev" else 1
                    idx = min(max(row["sibling_index"] + step, 0), row["sibling_count"] - 1)
                    self.store.conversations.select(row["sibling_ids"][idx])
                yield self.transcript(state), state, gr.skip(), *skip
            elif act == "delete":
                in_group = msg["role"] == "assistant" and self.groups.conv(state) is not None
                self.store.conversations.delete_message(mid, keep_replies=in_group)
                yield self.transcript(state), state, self.conv_list(state), *skip
            elif act == "edit":
                label = "Edit your message" if msg["role"] == "user" else f"Edit {msg.get('persona_name') or 'the'} reply"
                yield (gr.skip(), state, gr.skip(), gr.update(visible=True),
                       gr.update(value=msg["content"], label=label), {"mid": mid, "role": msg["role"]})
        except (ValueError, TypeError):
            raise notify.error("That message is no longer there.") from None
        except ChorusError as exc:
            raise notify.error(str(exc)) from None

    def save_edit(self, target, text, state):
        state = self.fix_state(state)
        if not target:
            return gr.skip(), gr.update(visible=False), None
        try:
            self.store.conversations.update_message(int(target["mid"]), content=text)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        return self.transcript(state), gr.update(visible=False), None

    # layout and wiring -------------------------------------------------------------

    def build(self):
        """The centre column. Returns the components other areas wire to."""
        c = SimpleNamespace()
        c.active = gr.HTML(elem_id="ch-active", js_on_load=None)
        c.transcript = gr.HTML(elem_id="ch-transcript", js_on_load=CLICK_JS + SCROLL_JS)
        with gr.Group(visible=False, elem_id="ch-edit") as c.edit_box:
            c.edit_text = gr.Textbox(lines=4, label="Edit", elem_id="ch-edit-text")
            with gr.Row():
                c.edit_save = gr.Button("Save", variant="primary", size="sm", elem_id="ch-edit-save")
                c.edit_resend = gr.Button("Save as new version and reply", size="sm", elem_id="ch-edit-resend")
                c.edit_cancel = gr.Button("Cancel", size="sm", elem_id="ch-edit-cancel")
        c.edit_target = gr.State(None)
        with gr.Row(equal_height=True):
            # lines=1 with max_lines>1: Gradio's textarea then submits on Enter and leaves
            # Shift+Enter to add a line, growing up to max_lines (with lines>1 it is the other
            # way round: Shift+Enter submits), as the placeholder promises.
            c.box = gr.Textbox(placeholder="Message (Enter sends, Shift+Enter for a new line)", show_label=False,
                               lines=1, max_lines=10, scale=8, elem_id="ch-input", autofocus=True)
            c.mode = self.groups.build_mode()
            with gr.Column(scale=1, min_width=110):
                c.send = gr.Button("Send", variant="primary", elem_id="ch-send")
                c.stop = gr.Button("Stop", variant="stop", elem_id="ch-stop")
        with gr.Row():
            c.regen = gr.Button("Regenerate", size="sm", elem_id="ch-regen")
        with gr.Accordion("Sampling settings", open=False, elem_id="ch-sampling"):
            with gr.Row():
                c.temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature",
                                          info="0 = always the most likely word", elem_id="ch-temperature")
                c.top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", elem_id="ch-top-p")
            with gr.Row():
                c.max_new = gr.Slider(16, 2048, value=200, step=8, label="Max new tokens", elem_id="ch-max-new")
                c.seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 = a new random seed each reply", elem_id="ch-seed")
        return c

    def wire(self, c, state, picker, convlist):
        sampling = [c.temperature, c.top_p, c.max_new, c.seed]
        send_args = dict(fn=self.send, inputs=[c.box, state, *sampling], outputs=[c.transcript, c.box, state, convlist],
                         concurrency_id="generate", concurrency_limit=8, show_progress="hidden")
        c.box.submit(**send_args)
        c.send.click(**send_args)
        c.stop.click(self.stop, None, None, queue=False, show_progress="hidden")
        c.regen.click(self.regenerate, [state, *sampling], [c.transcript, state, convlist],
                      concurrency_id="generate", show_progress="hidden")
        c.transcript.click(self.on_message_action, [state, *sampling],
                           [c.transcript, state, convlist, c.edit_box, c.edit_text, c.edit_target],
                           concurrency_id="generate", show_progress="hidden")
        picker.click(self.pick_persona, [state], [state, c.transcript, picker, c.active], show_progress="hidden")
        c.edit_save.click(self.save_edit, [c.edit_target, c.edit_text, state], [c.transcript, c.edit_box, c.edit_target])
        c.edit_cancel.click(lambda: (gr.update(visible=False), None), None, [c.edit_box, c.edit_target])

        def resend(target, text, st, temperature, top_p, max_new, seed, request: gr.Request):
            if not target or target.get("role") != "user":
                raise notify.error("Only your own messages can be sent again; use Save for replies.")
            yield from self.resend(target["mid"], text, st, temperature, top_p, max_new, seed, request)

        c.edit_resend.click(resend, [c.edit_target, c.edit_text, state, *sampling],
                            [c.transcript, state, convlist, c.edit_box, c.edit_target],
                            concurrency_id="generate", show_progress="hidden")
