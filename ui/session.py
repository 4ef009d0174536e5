"""Per-browser-session values that cannot live in `gr.State`.

`gr.State` holds what a session shows (its conversation and persona) as a small dict.
A stop flag is a `threading.Event`, which must be the same object for the streaming
handler and the Stop button, so it lives here, keyed by Gradio's session hash, in an
object that `ui.page.build()` creates (one per app, never a module global).
"""

from __future__ import annotations

import threading


def new_state(persona_id: str | None) -> dict:
    """What one browser tab shows: its conversation (None: a new chat not yet saved) and persona."""
    return {"conv": None, "persona": persona_id}


class Sessions:
    def __init__(self):
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._busy: dict[str, int] = {}

    def begin(self, session: str) -> threading.Event:
        """A fresh stop flag for a reply this session is about to stream."""
        with self._lock:
            event = threading.Event()
            self._stops[session] = event
            self._busy[session] = self._busy.get(session, 0) + 1
            return event

    def end(self, session: str, event: threading.Event) -> None:
        with self._lock:
            self._busy[session] = max(0, self._busy.get(session, 1) - 1)
            if self._stops.get(session) is event and not self._busy[session]:
                del self._stops[session]
            if not self._busy[session]:
                del self._busy[session]

    def busy(self, session: str) -> bool:
        with self._lock:
            return bool(self._busy.get(session))

    def stop(self, session: str) -> bool:
        """Ask this session's reply to stop after the current token; True if one was running."""
        with self._lock:
            event = self._stops.get(session)
        if event is None:
            return False
        event.set()
        return True
