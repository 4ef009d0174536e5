"""Turning a persona card and a conversation into the model's own chat format.

The card becomes the system message; the conversation's shown branch becomes the turns.
Replies written by another persona (after a mid-conversation switch) are labelled with
that persona's name so the new voice does not mistake them for its own. When the prompt
is too long for the context window, the oldest turns go first; the system message and the
latest user turn always stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_USER_NAME = "User"


_PLACEHOLDER = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)


def fill_placeholders(text: str, char: str, user: str = DEFAULT_USER_NAME) -> str:
    """Replace SillyTavern's {{char}}/{{user}} (any case) and the older <BOT>/<USER>."""
    return _PLACEHOLDER.sub(lambda m: char if (m.group(1) or m.group(2)).lower() in ("char", "bot") else user, text)


def system_prompt(persona: dict, user_name: str = DEFAULT_USER_NAME) -> str:
    """The persona card as one system message."""
    name = persona.get("name") or "Assistant"
    parts = []
    opening = (persona.get("system_prompt") or "").strip()
    parts.append(opening or f"You are {name}. Stay in character and answer as {name} would, in {name}'s voice.")
    for label, key in (("About {name}", "description"), ("Personality", "personality"), ("Scenario", "scenario")):
        value = (persona.get(key) or "").strip()
        if value:
            parts.append(f"{label.format(name=name)}: {value}")
    examples = (persona.get("example_dialogue") or "").strip()
    if examples:
        blocks = [b.strip() for b in examples.replace("\r\n", "\n").split("<START>") if b.strip()]
        parts.append(f"Examples of how {name} talks:\n" + "\n\n".join(blocks))
    return fill_placeholders("\n\n".join(parts), name, user_name)


@dataclass
class Prompt:
    messages: list[dict]  # what was rendered, after truncation
    input_ids: list[int]
    dropped_turns: int


def history_turns(path: list[dict], persona: dict) -> list[dict]:
    """Messages of the shown branch as chat turns, from the point of view of `persona`."""
    turns = []
    for msg in path:
        if msg["role"] == "system":
            continue
        content = msg["content"]
        if msg["role"] == "assistant" and msg.get("persona_id") and msg["persona_id"] != persona.get("id"):
            content = f"[{msg.get('persona_name') or msg['persona_id']}]: {content}"
        turns.append({"role": msg["role"], "content": content})
    return turns


def _apply(tokenizer, messages: list[dict]) -> list[int]:
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception:  # templates that refuse a system role or a leading assistant turn
        merged = _merge_for_strict_template(messages)
        out = tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def _merge_for_strict_template(messages: list[dict]) -> list[dict]:
    """Fold the system message into the first user turn and drop leading assistant turns."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    while rest and rest[0]["role"] == "assistant":
        system += f"\n\n(Opening line: {rest.pop(0)['content']})"
    if rest:
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}".strip()}
    else:
        rest = [{"role": "user", "content": system}]
    return rest


def build_prompt(tokenizer, persona: dict, path: list[dict], budget: int) -> Prompt:
    """Render system + turns, dropping the oldest turns until it fits in `budget` tokens."""
    system = {"role": "system", "content": system_prompt(persona)}
    turns = history_turns(path, persona)
    dropped = 0
    while True:
        messages = [system, *turns]
        ids = _apply(tokenizer, messages)
        if len(ids) <= budget or len(turns) <= 1:
            break
        # Estimate how many turns must go, then re-check with the real template.
        excess = len(ids) - budget
        freed = 0
        cut = 0
        while cut < len(turns) - 1 and freed < excess:
            freed += len(tokenizer.encode(turns[cut]["content"], add_special_tokens=False)) + 4
            cut += 1
        turns = turns[max(cut, 1):]
        dropped += max(cut, 1)
    if len(ids) > budget:
        # Only the system message and the last turn are left and they still do not fit:
        # keep the system message whole and the end of the last turn.
        keep_tail = max(budget - len(_apply(tokenizer, [system, {"role": "user", "content": ""}])), 16)
        last = turns[-1]
        tail_ids = tokenizer.encode(last["content"], add_special_tokens=False)[-keep_tail:]
        turns = [{"role": last["role"], "content": tokenizer.decode(tail_ids)}]
        messages = [system, *turns]
        ids = _apply(tokenizer, messages)
    return Prompt(messages=messages, input_ids=ids, dropped_turns=dropped)
