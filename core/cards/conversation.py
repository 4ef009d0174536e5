"""Exporting a conversation: Markdown for people, OpenAI chat JSONL for training tools.

Messages are dicts `{role, content, persona_name, persona_id, created}`; role is "user",
"assistant" or "system". `created` may be a datetime, epoch seconds (or milliseconds), an
ISO string, or None.

JSONL: one line per conversation, `{"messages": [...], "metadata": {...}}`. Messages carry
only keys OpenAI's fine-tuning validator accepts (role, content, name). Which persona wrote
each reply is kept twice: the assistant message's `name` (the persona name folded to
`^[a-zA-Z0-9_-]{1,64}$`, made unique per persona id) and `metadata.personas`, which maps
each such name back to the persona id and display name. Pass `include_metadata=False` for
tools that refuse unknown top-level keys.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any

ROLES = ("user", "assistant", "system")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_MD_ESCAPE = re.compile(r"([\\`*_\[\]<>#|])")


def _check(messages: list[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            # Rows come from Chorus's own store; an unknown role is a bug, not a user error.
            raise ValueError(f"message {i} has role {m.get('role')!r}; expected one of {ROLES}")


def format_time(created: Any) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM` (UTC for epochs); strings are shown as they are."""
    if created is None or created == "":
        return ""
    if isinstance(created, datetime):
        return created.strftime("%Y-%m-%d %H:%M")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        seconds = created / 1000 if created > 1e11 else created  # 1e11 s is year 5138: must be ms
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = str(created)
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text


def _md(text: str) -> str:
    """Escape Markdown syntax in a one-line label (title, speaker name)."""
    return _MD_ESCAPE.sub(r"\\\1", text)


def _speaker(m: dict[str, Any]) -> str:
    if m["role"] == "user":
        return "You"
    if m["role"] == "system":
        return "System"
    return str(m.get("persona_name") or "Assistant")


def conversation_to_markdown(title: str, messages: list[dict[str, Any]], *, members: list[str] | None = None,
                             mode: str | None = None) -> str:
    """A readable transcript: a title, then each message under its speaker's bold name and time.
    A group chat's `members` (display names) and reply `mode` are named under the title."""
    _check(messages)
    title = " ".join((title or "Conversation").split())
    out = [f"# {_md(title)}", ""]
    if members:
        line = "Group chat: " + ", ".join(_md(" ".join(n.split())) for n in members)
        out += [line + (f" (replies {_md(mode)})" if mode else ""), ""]
    for m in messages:
        when = format_time(m.get("created"))
        speaker = _md(" ".join(_speaker(m).split()))
        out.append(f"**{speaker}**" + (f" · {when}" if when else ""))
        out.append("")
        content = str(m.get("content") or "").replace("\r\n", "\n").rstrip()
        if m["role"] == "system":
            content = "\n".join(f"> {line}" if line else ">" for line in content.split("\n"))
        out.append(content if content else "*(empty)*")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def openai_name(display: str) -> str:
    """Fold a display name to OpenAI's `name` pattern: ASCII letters, digits, `_` and `-`, 1-64 chars."""
    ascii_name = unicodedata.normalize("NFKD", display).encode("ascii", "ignore").decode("ascii")
    name = _NAME_BAD.sub("_", ascii_name).strip("_")
    return name[:64].rstrip("_") or "persona"


def conversation_to_openai_jsonl(messages: list[dict[str, Any]], *, include_metadata: bool = True,
                                 group: dict[str, Any] | None = None) -> str:
    """The conversation as one OpenAI chat line (ending in a newline); "" when there are no messages.
    `group` ({members: [{persona_id, persona_name}], mode}) goes into the metadata of a group chat."""
    _check(messages)
    if not messages:
        return ""
    names: dict[Any, str] = {}  # persona key -> unique OpenAI name
    personas: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": str(m.get("content") or "")}
        if m["role"] == "assistant" and (m.get("persona_id") is not None or m.get("persona_name")):
            key = m.get("persona_id") if m.get("persona_id") is not None else ("name", m.get("persona_name"))
            if key not in names:
                base = openai_name(str(m.get("persona_name") or m.get("persona_id")))
                name, n = base, 2
                while name in personas:  # two personas that fold to the same name stay apart
                    suffix = f"_{n}"
                    name, n = base[: 64 - len(suffix)] + suffix, n + 1
                names[key] = name
                personas[name] = {"persona_id": m.get("persona_id"), "persona_name": m.get("persona_name")}
            item["name"] = names[key]
        out.append(item)
    line: dict[str, Any] = {"messages": out}
    if include_metadata:
        line["metadata"] = {"source": "chorus", "personas": personas}
        if group:
            line["metadata"]["group"] = group
    return json.dumps(line, ensure_ascii=False) + "\n"
