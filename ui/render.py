"""Turning store rows into safe HTML: message bodies, the transcript, persona cards and
the conversation list.

Everything a user or a persona card wrote goes through `markdown_html` (markdown-it with
raw HTML switched off, so tags show as text and never run) or `html.escape`. The HTML
built here carries `data-act` attributes; `ui/assets.py` turns clicks on them into one
Gradio event with the action and its target.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime, timezone

from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).enable(["table", "strikethrough"])

# Colours for the initial-letter avatar of a persona without an image.
_PALETTE = ("#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#ec4899")


def markdown_html(text: str) -> str:
    """Markdown to HTML with raw HTML escaped (it is shown, never run) and unsafe links dropped."""
    return _MD.render(text or "")


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def md_escape(text: str) -> str:
    """Escape markdown and HTML in text shown through gr.Markdown (names, titles)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|>~])", r"\\\1", html.escape(text or ""))


def file_url(path) -> str:
    """The URL Gradio serves a file under (the file's folder must be in `allowed_paths`)."""
    return f"/gradio_api/file={path}"


def avatar_html(name: str | None, url: str | None, size: str = "md") -> str:
    if url:
        return f'<img class="ch-av ch-av-{size}" src="{esc(url)}" alt="{esc(name or "")}">'
    label = (name or "?").strip()[:1].upper() or "?"
    colour = _PALETTE[int(hashlib.sha1((name or "").encode()).hexdigest(), 16) % len(_PALETTE)]
    return f'<span class="ch-av ch-av-{size} ch-av-letter" style="background:{colour}">{esc(label)}</span>'


def when(stamp: str | None) -> str:
    """'just now', '5 min ago', '3 h ago', 'yesterday', or a date."""
    if not stamp:
        return ""
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    secs = (datetime.now(timezone.utc) - then).total_seconds()
    if secs < 60:
        return "just now"
    if secs < 3600:
        return f"{int(secs // 60)} min ago"
    if secs < 86400:
        return f"{int(secs // 3600)} h ago"
    if secs < 2 * 86400:
        return "yesterday"
    return then.astimezone().strftime("%d %b %Y")


def _button(act: str, mid, label: str, title: str, extra: str = "") -> str:
    return (
        f'<button class="ch-btn" data-act="{act}" data-mid="{esc(mid)}" title="{esc(title)}" '
        f'aria-label="{esc(title)}"{extra}>{label}</button>'
    )


def message_html(msg: dict, avatars: dict, *, last: bool = False, streaming: bool = False, preview: bool = False,
                 stop_id: str | None = None) -> str:
    """One message: header (avatar, name, swipe), body, and its action buttons. A group
    member's reply being written carries its own Stop (`stop_id`: the persona's id)."""
    role = msg["role"]
    mid = msg.get("id", "")
    if role == "user":
        who, av = "You", avatar_html("You", None, "sm").replace("ch-av-letter", "ch-av-letter ch-av-you")
    else:
        who = msg.get("persona_name") or "Assistant"
        av = avatar_html(who, avatars.get(msg.get("persona_id")), "md")
    head = [f'<span class="ch-who">{esc(who)}</span>']
    meta = msg.get("meta") or {}
    if meta.get("greeting"):
        head.append('<span class="ch-tag">greeting</span>')
    if meta.get("stopped"):
        head.append('<span class="ch-tag ch-tag-stop">stopped</span>')
    if preview and role == "assistant":
        head.append('<span class="ch-tag">new chat</span>')
    if msg.get("waiting"):
        head.append('<span class="ch-tag ch-tag-wait">waiting</span>')
    if streaming and stop_id:
        head.append(f'<button class="ch-btn ch-stop-one" data-act="stop-member" data-id="{esc(stop_id)}" '
                    f'title="Stop {esc(msg.get("persona_name") or "")}\'s reply">Stop</button>')
    count = msg.get("sibling_count", 1) or 1
    if count > 1 and not streaming:
        idx = msg.get("sibling_index", 0)
        prev_dis = " disabled" if idx == 0 else ""
        next_dis = " disabled" if idx >= count - 1 else ""
        head.append(
            '<span class="ch-swipe">'
            + _button("prev", mid, "&#8249;", "Previous version", prev_dis)
            + f'<span class="ch-swipe-pos">{idx + 1}/{count}</span>'
            + _button("next", mid, "&#8250;", "Next version", next_dis)
            + "</span>"
        )
    body = markdown_html(msg.get("content", ""))
    if streaming and msg.get("waiting"):
        body = ""
    elif streaming:
        body += '<span class="ch-cursor"></span>'
    elif role == "assistant" and not msg.get("content"):
        body = '<p class="ch-empty">(no text)</p>'
    tools = ""
    if not streaming and not preview and mid != "":
        parts = [_button("copy", mid, "Copy", "Copy this message")]
        parts.append(_button("edit", mid, "Edit", "Edit this message"))
        if last and role == "assistant" and not meta.get("greeting"):
            parts.append(_button("regen", mid, "Regenerate", "Write another version of this reply"))
        if msg.get("in_group") and role == "assistant":  # the other members' replies stay
            parts.append(_button("delete", mid, "Delete", "Delete this reply (the replies after it stay)",
                                 ' data-confirm="Delete this reply? The replies after it stay."'))
        else:
            parts.append(_button("delete", mid, "Delete", "Delete this message and the replies below it"))
        tools = '<div class="ch-tools">' + "".join(parts) + "</div>"
    raw = f'<textarea class="ch-raw" hidden>{esc(msg.get("content", ""))}</textarea>' if tools else ""
    warn = f'<div class="ch-warn">{esc(meta["warning"])}</div>' if meta.get("warning") else ""
    if meta.get("error") and role == "assistant":  # a reply cut short (say, the engine server went away): kept, marked
        warn += f'<div class="ch-warn">Cut short: {esc(meta["error"])}</div>'
    if meta.get("thinking"):  # a reasoning model's thought (core.thinking): kept, shown collapsed
        warn += f'<details class="ch-thinking"><summary>Thinking</summary><pre>{esc(meta["thinking"])}</pre></details>'
    return (
        f'<div class="ch-msg ch-{role}{" ch-streaming" if streaming else ""}" data-mid="{esc(mid)}" '
        f'data-persona="{esc(msg.get("persona_id") or "")}">'
        f'<div class="ch-side">{av}</div><div class="ch-main">'
        f'<div class="ch-head">{"".join(head)}</div>{warn}'
        f'<div class="ch-body">{body}</div>{raw}{tools}</div></div>'
    )


def transcript_html(messages: list[dict], avatars: dict, *, streaming: dict | list[dict] | None = None,
                    notice: str = "", preview: bool = False, rendered: list[str] | None = None,
                    together: bool = False, placeholder: str = "") -> str:
    """The whole shown branch; `rendered` is the cached HTML of `messages` while streaming.

    `streaming` is the reply being written, or a group round's replies being written (or
    waiting their turn), each with its own Stop; `together` shows those side by side."""
    if rendered is None:
        rendered = [
            message_html(m, avatars, last=(i == len(messages) - 1), preview=preview)
            for i, m in enumerate(messages)
        ]
    parts = list(rendered)
    if isinstance(streaming, dict):
        parts.append(message_html(streaming, avatars, streaming=True))
    elif streaming:
        live = "".join(message_html(r, avatars, streaming=True, stop_id=r.get("persona_id")) for r in streaming)
        parts.append(f'<div class="ch-live{" ch-live-together" if together else ""}">{live}</div>')
    if notice:
        parts.append(f'<div class="ch-notice">{esc(notice)}</div>')
    if not parts:
        parts.append(f'<div class="ch-placeholder">{esc(placeholder or "Pick a persona and say hello.")}</div>')
    return '<div class="ch-transcript">' + "".join(parts) + "</div>"


def persona_cards_html(personas: list[dict], avatars: dict, active: str | None) -> str:
    cards = []
    for p in personas:
        on = " ch-card-on" if p["id"] == active else ""
        line = p.get("tagline") or (p.get("description") or "").split("\n")[0]
        badge = '<span class="ch-tag ch-tag-lora" title="Has a LoRA adapter">LoRA</span>' if p.get("adapter_id") else ""
        cards.append(
            f'<button class="ch-card{on}" data-act="persona" data-id="{esc(p["id"])}" title="Talk to {esc(p["name"])}">'
            f'{avatar_html(p["name"], avatars.get(p["id"]), "md")}'
            f'<span class="ch-card-text"><span class="ch-card-name">{esc(p["name"])} {badge}</span>'
            f'<span class="ch-card-line">{esc(line)}</span></span></button>'
        )
    if not cards:
        cards.append('<div class="ch-placeholder">No personas yet: create one in the Personas tab.</div>')
    return '<div class="ch-cards">' + "".join(cards) + "</div>"


def active_persona_html(persona: dict | None, avatar: str | None) -> str:
    if persona is None:
        return '<div class="ch-active">No persona picked</div>'
    line = persona.get("tagline") or (persona.get("description") or "").split("\n")[0]
    return (
        f'<div class="ch-active" data-persona="{esc(persona["id"])}">{avatar_html(persona["name"], avatar, "lg")}'
        f'<div><div class="ch-active-name">Talking to <b>{esc(persona["name"])}</b></div>'
        f'<div class="ch-card-line">{esc(line)}</div></div></div>'
    )


def active_group_html(members: list[dict], avatars: dict, mode_label: str) -> str:
    """The header of a group chat: its members' avatars and names, and how they reply."""
    if not members:
        return '<div class="ch-active ch-active-group">Group chat: every member has been deleted</div>'
    faces = "".join(avatar_html(p["name"], avatars.get(p["id"]), "md") for p in members)
    names = ", ".join(esc(p["name"]) for p in members)
    return (
        f'<div class="ch-active ch-active-group" data-group="1"><span class="ch-faces">{faces}</span>'
        f'<div><div class="ch-active-name">Group chat with <b>{names}</b></div>'
        f'<div class="ch-card-line">Replies {esc(mode_label)}</div></div></div>'
    )


def conversation_list_html(conversations: list[dict], current: str | None, names: dict | None = None) -> str:
    """`names` maps persona ids to names, for group chats' members (a deleted member keeps
    the name it spoke under)."""
    names_by_id = names or {}
    rows = []
    for c in conversations:
        if not c.get("message_count"):
            continue
        on = " ch-conv-on" if c["id"] == current else ""
        if c.get("members"):
            spoken = c.get("personas") or []
            members = [names_by_id.get(pid) for pid in c["members"] if names_by_id.get(pid)]
            members += [n for n in spoken if n not in members]
            names = "Group: " + ", ".join(members)
        else:
            names = ", ".join(c.get("personas") or []) or "no replies yet"
        rows.append(
            f'<button class="ch-conv{on}" data-act="open" data-id="{esc(c["id"])}">'
            f'<span class="ch-conv-title">{esc(c.get("title") or "Untitled")}</span>'
            f'<span class="ch-conv-meta">{esc(names)} · {esc(when(c.get("updated")))}</span></button>'
        )
    if not rows:
        rows.append('<div class="ch-placeholder">Your conversations will appear here.</div>')
    return '<div class="ch-convs">' + "".join(rows) + "</div>"
