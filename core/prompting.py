"""Turning a persona card and a conversation into the model's own chat format.

The card becomes the system message; the conversation's shown branch becomes the turns.
Replies written by another persona (after a mid-conversation switch) are not the new
voice's own words: they become user-side turns under that persona's name, as other people's
turns are in a training example made from a group chat ("Name: text"), and once another
persona has spoken the user's turns carry the user's name too, so every line says who said
it. Consecutive user-side turns are one turn, as in training. When the prompt is too long
for the context window, the oldest turns go first; the system message and the latest user
turn always stay. Rendering goes through core.chat_template, which fits the messages to what
the model's template accepts (no system role, strict alternation, thinking switch), the
same way the training examples are rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.chat_template import encode_text, render
from core.thinking import prompt_opens_thinking

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
    opens_thinking: bool = False  # the prompt ends inside a <think> block (core.thinking)


def _other_persona(msg: dict, persona: dict) -> bool:
    return msg["role"] == "assistant" and bool(msg.get("persona_id")) and msg["persona_id"] != persona.get("id")


def history_turns(path: list[dict], persona: dict, user_name: str = DEFAULT_USER_NAME) -> list[dict]:
    """Messages of the shown branch as chat turns, from the point of view of `persona`."""
    named = any(_other_persona(m, persona) for m in path)
    turns: list[dict] = []
    for msg in path:
        if msg["role"] == "system":
            continue
        role, content = msg["role"], msg["content"]
        if _other_persona(msg, persona):
            role, content = "user", f"{msg.get('persona_name') or msg['persona_id']}: {content}"
        elif role == "user" and named:
            content = f"{user_name}: {content}"
        if turns and turns[-1]["role"] == role == "user":  # one user-side turn, as in training
            turns[-1]["content"] += "\n" + content
        else:
            turns.append({"role": role, "content": content})
    return turns


def _apply(tokenizer, messages: list[dict]) -> list[int]:
    return encode_text(tokenizer, render(tokenizer, messages, generation_prompt=True))


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
    opens = prompt_opens_thinking(tokenizer.decode(ids[-16:]))
    return Prompt(messages=messages, input_ids=ids, dropped_turns=dropped, opens_thinking=opens)
