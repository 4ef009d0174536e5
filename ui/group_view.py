"""Group chats on the page: the "New group chat" panel (pick 2-8 personas), the reply-mode
control beside the message box, and a group round streamed live, each member's reply with
its name, avatar and own Stop (side by side when everyone answers at once).

The chat area (`ui/chat_view.py`) hands a group conversation's send, regenerate and
edit-and-resend here; every reply is then rendered from the store as in one-to-one chats,
so swipes, edit, delete and copy work the same. The service is `core.group_chat`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from core.errors import ChorusError, NotFound
from core.group_chat import MODE_LABELS, GroupChatService
from ui import notify, render

MODE_CHOICES = [("In turn", "turn"), ("Everyone at once", "together"), ("Only @mentioned", "mention")]
STREAM_EVERY_S = 0.05


class GroupView:
    def __init__(self, chat_view):
        self.chat = chat_view
        self.runtime = chat_view.runtime
        self.store = chat_view.store
        self.sessions = chat_view.sessions

    def service(self, with_model: bool = False) -> GroupChatService:
        return GroupChatService(self.store, self.runtime.chat if with_model else None)

    # reading ---------------------------------------------------------------------------

    def conv(self, state: dict) -> dict | None:
        """The open conversation when it is a group chat, else None."""
        if not (state or {}).get("conv"):
            return None
        try:
            conv = self.store.conversations.get(state["conv"])
        except NotFound:
            return None
        return conv if conv["members"] else None

    def members(self, conv: dict) -> list[dict]:
        return self.service().members(conv)

    def active(self, conv: dict) -> str:
        return render.active_group_html(self.members(conv), self.chat.avatars(), MODE_LABELS[conv["group_mode"]])

    def placeholder(self, conv: dict) -> str:
        names = ", ".join(p["name"] for p in self.members(conv))
        if conv["group_mode"] == "mention":
            return f"Group chat with {names}. Address someone with @Name (or @all) to get a reply."
        return f"Group chat with {names}. Say hello; they reply {MODE_LABELS[conv['group_mode']]}."

    def mode_update(self, state):
        conv = self.conv(state)
        if conv is None:
            return gr.update(visible=False)
        return gr.update(visible=True, value=conv["group_mode"])

    def choices(self) -> list[tuple[str, str]]:
        return [(p["name"], p["id"]) for p in self.store.personas.list()]

    # handlers --------------------------------------------------------------------------

    def open_panel(self):
        return gr.update(visible=True), gr.update(choices=self.choices(), value=[])

    def start(self, persona_ids, state):
        """Start a group chat with the picked personas (replying in turn, the usual default)."""
        state = self.chat.fix_state(state)
        try:
            conv = self.service().start_group(list(persona_ids or []))
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        state = {**state, "conv": conv["id"]}
        return (state, self.chat.transcript(state), self.chat.conv_list(state), gr.update(visible=False),
                self.chat.active(state), gr.update(visible=True, value=conv["group_mode"]))

    def set_mode(self, mode, state):
        conv = self.conv(state)
        if conv is None or mode == conv["group_mode"]:
            return gr.skip(), gr.skip()
        try:
            self.service().set_mode(conv["id"], mode)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        return self.chat.active(state), self.chat.transcript(state)

    def stop_member(self, request: gr.Request, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        if data.get("act") == "stop-member" and request is not None:
            self.sessions.stop_member(request.session_hash, str(data.get("id") or ""))

    # streaming a round -----------------------------------------------------------------

    def stream(self, state, request, start, *, pending_user: str | None = None, regen_of: int | None = None):
        """Run a group round (or one regenerated reply): `start(service, conv_id, stops)`
        returns the service's events; yields (transcript_html, state) as they come."""
        session = request.session_hash if request else "no-session"
        conv = self.conv(state)
        stop, stops = self.sessions.begin_group(session, conv["members"])
        events = None
        try:
            pending = {"role": "user", "content": pending_user, "id": ""} if pending_user else None
            ready = yield from self.chat._wait_for_model(state, stop, pending)
            if not ready:
                yield self.chat.transcript(state, notice="Stopped before the model was ready; your message was not sent."), state
                return
            events = start(self.service(with_model=True), conv["id"], stops)
            together = conv["group_mode"] == "together"
            avatars = self.chat.avatars()

            def shown_path():
                path = self.chat.group_path(conv["id"])
                if regen_of is not None:  # the reply being written again is hidden meanwhile
                    ids = [m["id"] for m in path]
                    path = path[:ids.index(regen_of)] if regen_of in ids else path
                return path, [render.message_html(m, avatars) for m in path]

            path, rendered = shown_path()
            live: dict[str, dict] = {}

            def html():
                return render.transcript_html(path, avatars, streaming=list(live.values()), rendered=rendered, together=together)

            yield html(), state
            shown = time.monotonic()
            for event in events:
                pid = event.persona_id
                if event.kind in ("queued", "start"):
                    reply = live.setdefault(pid, {"role": "assistant", "content": "", "persona_id": pid,
                                                  "persona_name": event.name, "meta": {}})
                    reply["waiting"] = event.kind == "queued"
                    yield html(), state
                elif event.kind == "delta" and pid in live:
                    live[pid]["content"] += event.text
                    if time.monotonic() - shown >= STREAM_EVERY_S:
                        shown = time.monotonic()
                        yield html(), state
                elif event.kind in ("done", "error", "skipped"):
                    live.pop(pid, None)
                    if event.kind == "error":
                        notify.warning(f"{event.name}: {event.text}")
                    regen_of = None if event.kind == "done" else regen_of
                    path, rendered = shown_path()
                    yield html(), state
                elif event.kind == "warning":
                    notify.warning(event.text)
                elif event.kind == "info" and event.info.get("dropped_turns"):
                    notify.info(f"The oldest {event.info['dropped_turns']} turns were left out of "
                                f"{event.name}'s prompt to fit the model's context.")
            yield self.chat.transcript(state), state
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        finally:
            if events is not None:
                events.close()  # replies cut short are saved by the core as they stand
            self.sessions.end(session, stop)

    # layout ----------------------------------------------------------------------------

    def build_panel(self):
        """The "New group chat" panel, in the left column under "+ New chat"."""
        g = SimpleNamespace()
        g.open = gr.Button("+ New group chat", variant="secondary", elem_id="ch-group-open")
        with gr.Group(visible=False, elem_id="ch-group-new") as g.panel:
            g.members = gr.CheckboxGroup(choices=self.choices(), label="Members (2 to 8)", elem_id="ch-group-members")
            with gr.Row():
                g.start = gr.Button("Start group chat", variant="primary", size="sm", elem_id="ch-group-start")
                g.cancel = gr.Button("Cancel", size="sm", elem_id="ch-group-cancel")
        return g

    @staticmethod
    def build_mode():
        """The reply-mode control, beside the message box; shown in group chats only."""
        return gr.Dropdown(MODE_CHOICES, value="turn", label="Who replies", show_label=False, visible=False,
                           elem_id="ch-mode", container=False, scale=2, min_width=170, interactive=True,
                           filterable=False)

    def wire(self, g, c, state, convlist):
        g.open.click(self.open_panel, None, [g.panel, g.members], queue=False)
        g.cancel.click(lambda: gr.update(visible=False), None, [g.panel], queue=False)
        g.start.click(self.start, [g.members, state], [state, c.transcript, convlist, g.panel, c.active, c.mode],
                      show_progress="hidden")
        c.mode.input(self.set_mode, [c.mode, state], [c.active, c.transcript], show_progress="hidden")
        # whatever changed the open conversation (open, new chat, a new group), the control follows
        state.change(self.mode_update, [state], [c.mode], queue=False, show_progress="hidden")
        c.transcript.click(self.stop_member, None, None, queue=False, show_progress="hidden")
