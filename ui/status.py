"""The status line: model, quantization, device, memory, resident adapters, last switch;
or the loading progress while the model loads in the background."""

from __future__ import annotations

import time

from ui.render import esc


def status_html(runtime, persona_names: dict[str, str] | None = None) -> str:
    names = persona_names or {}
    if runtime.error is not None:
        return f'<div class="ch-status ch-status-err">Model failed to load: {esc(runtime.error)}</div>'
    if not runtime.ready:
        last = runtime.progress[-1] if runtime.progress else "starting"
        waited = int(time.time() - runtime.started)
        return (
            f'<div class="ch-status ch-status-loading"><span class="ch-spinner"></span>'
            f"Loading the model in the background ({waited} s): {esc(last)} "
            "You can browse, edit personas and read conversations meanwhile.</div>"
        )
    info = runtime.chat.engine.status()
    resident = [names.get(pid, pid) for pid in info.get("resident_adapters") or []]
    parts = [
        f"<b>{esc(info.get('name'))}</b>",
        esc(info.get("quantization")),
        esc(info.get("device")),
        f"{esc(info.get('footprint_mb'))} MB",
        f"adapters: {esc(', '.join(resident)) if resident else 'none loaded'}",
    ]
    switch = info.get("last_switch") or {}
    if switch.get("at"):
        who = switch.get("adapter")  # peft's name: "<persona id>__<sha prefix>"
        pid = who.rsplit("__", 1)[0] if who else None
        label = names.get(pid, pid) if pid else "base model"
        stamp = time.strftime("%H:%M:%S", time.localtime(switch["at"]))
        ms = f", {switch['ms']} ms" if switch.get("ms") is not None else ""
        parts.append(f"last switch: {esc(label)} at {stamp}{esc(ms)}")
    else:
        parts.append("last switch: none yet")
    gen = info.get("last_generation") or {}
    if gen.get("tok_s"):
        parts.append(f"{esc(gen['tok_s'])} tok/s")
    return '<div class="ch-status ch-status-ok">' + " · ".join(parts) + "</div>"
