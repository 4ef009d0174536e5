"""Per-browser-session values that cannot live in `gr.State`.

`gr.State` holds what a session shows (its conversation and persona) as a small dict.
A stop flag is a `threading.Event`, which must be the same object for the streaming
handler and the Stop button, so it lives here, keyed by Gradio's session hash, in an
object that `ui.page.build()` creates (one per app, never a module global). So does the
time this session last switched persona, which the status line shows.
"""

from __future__ import annotations

import threading
import time

MAX_SWITCHES = 1000  # sessions remembered for the status line; the oldest are forgotten first


def new_state(persona_id: str | None) -> dict:
    """What one browser tab shows: its conversation (None: a new chat not yet saved) and persona."""
    return {"conv": None, "persona": persona_id}


class Sessions:
    def __init__(self):
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._busy: dict[str, int] = {}
        self._switches: dict[str, dict] = {}  # session -> its last persona switch
        self._shown: dict[str, str | None] = {}  # session -> the persona it shows
        self._members: dict[str, dict[str, threading.Event]] = {}  # session -> a group round's per-member flags

    def begin(self, session: str) -> threading.Event:
        """A fresh stop flag for a reply this session is about to stream."""
        with self._lock:
            event = threading.Event()
            self._stops[session] = event
            self._busy[session] = self._busy.get(session, 0) + 1
            return event

    def begin_group(self, session: str, member_ids: list[str]) -> tuple[threading.Event, dict[str, threading.Event]]:
        """Stop flags for a group round: the session's (Stop stops every member) and one per member."""
        event = self.begin(session)
        members = {pid: threading.Event() for pid in member_ids}
        with self._lock:
            self._members[session] = members
        return event, members

    def stop_member(self, session: str, persona_id: str) -> bool:
        """Stop one member's reply in this session's group round; True if it was part of one."""
        with self._lock:
            event = self._members.get(session, {}).get(persona_id)
        if event is None:
            return False
        event.set()
        return True

    def end(self, session: str, event: threading.Event) -> None:
        with self._lock:
            self._busy[session] = max(0, self._busy.get(session, 1) - 1)
            if self._stops.get(session) is event and not self._busy[session]:
                del self._stops[session]
                self._members.pop(session, None)
            if not self._busy[session]:
                del self._busy[session]

    def busy(self, session: str) -> bool:
        with self._lock:
            return bool(self._busy.get(session))

    def stop(self, session: str) -> bool:
        """Ask this session's reply to stop after the current token; True if one was running."""
        with self._lock:
            event = self._stops.get(session)
            members = list(self._members.get(session, {}).values())
        for flag in members:
            flag.set()
        if event is None:
            return False
        event.set()
        return True

    def note_shown(self, session: str, persona_id: str | None) -> None:
        """Remember the persona a session shows without counting it as a switch (page load)."""
        with self._lock:
            self._shown.pop(session, None)
            self._shown[session] = persona_id
            while len(self._shown) > MAX_SWITCHES:
                del self._shown[next(iter(self._shown))]

    def shown(self, session: str) -> str | None:
        with self._lock:
            return self._shown.get(session)

    def note_switch(self, session: str, persona: dict) -> None:
        """Remember that this session switched to `persona` (a store row) just now."""
        with self._lock:
            self._switches.pop(session, None)
            self._switches[session] = {"persona": persona["id"], "name": persona["name"],
                                       "bare": not persona.get("adapter_id"), "at": time.time()}
            while len(self._switches) > MAX_SWITCHES:
                del self._switches[next(iter(self._switches))]
        self.note_shown(session, persona["id"])

    def last_switch(self, session: str | None) -> dict | None:
        """{persona, name, bare, at} of this session's last persona switch, or None."""
        with self._lock:
            found = self._switches.get(session) if session else None
            return dict(found) if found else None
