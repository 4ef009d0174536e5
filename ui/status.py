"""The status line: model, its family, quantization, device, memory, resident adapters, this
session's last persona switch (with the engine's adapter swap time), the last generation
speed; or the loading progress while the model loads or switches in the background."""

from __future__ import annotations

import time

import gradio as gr

from ui.render import esc


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def switch_text(user_switch: dict | None, engine_switch: dict, names: dict[str, str]) -> str:
    """'last switch: Juniper 12:03:04, adapter swap 0.3 ms'.

    `user_switch` is this session's last persona switch (`Sessions.last_switch`), which
    happens for personas without an adapter too; `engine_switch` is the engine's last adapter
    swap, whose time is shown when it belongs to that switch (the same persona, or the bare
    base for a persona without adapter, swapped after the user switched).
    """
    who = engine_switch.get("adapter")  # peft's name: "<persona id>__<sha prefix>"; None: the bare base
    engine_pid = who.rsplit("__", 1)[0] if who else None
    if user_switch:
        pid = user_switch.get("persona")
        label = names.get(pid) or user_switch.get("name") or pid
        text = f"last switch: {esc(label)} {_clock(user_switch['at'])}"
        ours = engine_pid == pid or (engine_pid is None and user_switch.get("bare"))
        if engine_switch.get("at") and engine_switch["at"] >= user_switch["at"] and ours \
                and engine_switch.get("ms") is not None:
            text += f", adapter swap {esc(engine_switch['ms'])} ms"
        elif user_switch.get("bare"):
            text += " (no adapter)"
        return text
    if engine_switch.get("at"):
        label = names.get(engine_pid, engine_pid) if engine_pid else "base model"
        ms = f", {engine_switch['ms']} ms" if engine_switch.get("ms") is not None else ""
        return f"last switch: {esc(label)} at {_clock(engine_switch['at'])}{esc(ms)}"
    return "last switch: none yet"


def status_html(runtime, persona_names: dict[str, str] | None = None, user_switch: dict | None = None) -> str:
    """The status line; `user_switch` is this session's last persona switch, if any."""
    names = persona_names or {}
    if runtime.error is not None:
        return f'<div class="ch-status ch-status-err">Model failed to load: {esc(runtime.error)}</div>'
    if not runtime.ready:
        last = runtime.progress[-1] if runtime.progress else "starting"
        waited = int(time.time() - runtime.started)
        what = f"Switching the model to {esc(runtime.switching)}" if runtime.switching else "Loading the model"
        return (
            f'<div class="ch-status ch-status-loading"><span class="ch-spinner"></span>'
            f"{what} in the background ({waited} s): {esc(last)} "
            "Chat waits for it; you can browse, edit personas and read conversations meanwhile.</div>"
        )
    info = runtime.chat.engine.status()
    resident = [names.get(pid, pid) for pid in info.get("resident_adapters") or []]
    if info.get("backend") == "remote":  # core/engine/remote.py: the weights are on the server
        parts = [
            f"<b>{esc(info.get('name'))}</b>",
            f"family {esc(info.get('model_type'))}",
            f"remote engine: {esc(info.get('server_kind'))} at {esc(info.get('server'))}, base {esc(info.get('served_model'))}",
            f"adapters on the server: {esc(', '.join(resident)) if resident else 'none yet'}",
        ]
    else:
        parts = [
            f"<b>{esc(info.get('name'))}</b>",
            f"family {esc(info.get('model_type'))}",
            esc(info.get("quantization")),
            esc(info.get("device")),
            f"{esc(info.get('footprint_mb'))} MB",
            f"adapters: {esc(', '.join(resident)) if resident else 'none loaded'}",
        ]
    parts.append(switch_text(user_switch, info.get("last_switch") or {}, names))
    gen = info.get("last_generation") or {}
    if gen.get("tok_s"):
        parts.append(f"{esc(gen['tok_s'])} tok/s")
    fast = info.get("fast_paths") or {}
    if fast and (not fast.get("ok", True) or fast.get("declined")):  # a kernel off, or one this family does not take
        parts.append(f"fast paths: {esc(fast.get('summary'))}")
    parts.extend(training_text(runtime.store))
    if runtime.switch_error:
        parts.append(f'<span class="ch-status-err">{esc(runtime.switch_error)}</span>')
    return '<div class="ch-status ch-status-ok">' + " · ".join(parts) + "</div>"


def training_text(store) -> list[str]:
    """'training Mara: step 12/40' for each run going, so it shows from every tab."""
    out = []
    for row in store.training.active():
        total = row.get("total_steps") or 0
        where = f"step {row['step']}/{total}" if total else "starting"
        out.append(f'<span class="ch-training">training {esc(row["speaker"])}: {esc(where)}</span>')
    return out


def note_pick(sessions, chat_view):
    """A click handler for the persona picker that records a switch to another persona.

    It runs beside the chat's own click handler, so the session's `gr.State` may already
    hold the new persona; the persona shown before is the one `Sessions` remembers (seeded
    by `note_shown` when the page loads).
    """

    def handler(request: gr.Request, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        if data.get("act") != "persona" or request is None:
            return
        persona = chat_view.persona(data.get("id"))
        if persona is not None and persona["id"] != sessions.shown(request.session_hash):
            sessions.note_switch(request.session_hash, persona)

    return handler


def note_shown(sessions, chat_view):
    """A page-load handler that remembers which persona the session starts with (not a switch)."""

    def handler(state, request: gr.Request):
        if request is not None:
            sessions.note_shown(request.session_hash, chat_view.fix_state(state).get("persona"))

    return handler
