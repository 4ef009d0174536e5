"""What a model's chat template accepts, and rendering any conversation in a form it takes.

Chat templates differ in ways that make a naive render raise or mislead:
- some have no system role (Gemma 2: "System role not supported");
- some demand strictly alternating user/assistant turns, starting with the user
  (Mistral's `raise_exception('Conversation roles must alternate ...')`);
- reasoning templates (Qwen3) take `enable_thinking`; persona chat runs with it off.

`traits(tokenizer)` finds these out by rendering a few probe conversations once per
template (cached by the template's source), and `render()` shapes the messages to fit:
the card goes at the head of the first user turn when there is no system role;
consecutive same-role turns merge when alternation is demanded; a conversation that
opens with the persona's own words (a greeting, or a training window that starts on the
speaker) gets a user turn before it when the template refuses an assistant-first
conversation. That user turn is the card itself when the card has no system role to sit
in, otherwise a neutral stage direction (`OPENING`): the persona's greeting stays an
assistant turn, so it still shows the model its own voice (and in training its loss
stays on it), which folding it into the card's text would lose.

The chat prompt (core.prompting) and the training examples (core.training.dataset) both
render through here, so a persona is served with exactly the prompt it was trained with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# The user turn put before an opening assistant turn when the template refuses to start
# with one and there is no card to stand there instead.
OPENING = "(The conversation begins.)"

_SYS, _A, _B, _C = "\u2063sys-probe", "\u2063a-probe", "\u2063b-probe", "\u2063c-probe"


@dataclass(frozen=True)
class TemplateTraits:
    """What one chat template accepts (found by rendering, see `traits`)."""

    system_role: bool  # renders a system message (raising or silently dropping it: False)
    strict_alternation: bool  # refuses two user turns in a row
    assistant_first: bool  # accepts an assistant turn before any user turn
    thinking_switch: bool  # takes `enable_thinking` (the output differs with it on and off)


# Memo of a pure function of the template's source and special tokens: probing renders
# five times, a chat reply must not pay that on every prompt.
_cache: dict[tuple, TemplateTraits] = {}
_cache_lock = threading.Lock()


def _key(tokenizer) -> tuple:
    return (repr(getattr(tokenizer, "chat_template", None)), tokenizer.bos_token, tokenizer.eos_token)


def _probe(tokenizer, messages: list[dict], must_show: tuple[str, ...], **kwargs) -> str | None:
    """The rendered text, or None when the template raises or drops a probe's text."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:  # a template refuses with raise_exception (a jinja2 TemplateError) or worse
        return None
    return text if all(s in text for s in must_show) else None


def traits(tokenizer) -> TemplateTraits:
    """The template's traits, probed once per template source."""
    key = _key(tokenizer)
    with _cache_lock:
        found = _cache.get(key)
    if found is not None:
        return found
    user = {"role": "user", "content": _A}
    found = TemplateTraits(
        system_role=_probe(tokenizer, [{"role": "system", "content": _SYS}, user], (_SYS, _A)) is not None,
        strict_alternation=_probe(tokenizer, [user, {"role": "user", "content": _B}], (_A, _B)) is None,
        assistant_first=_probe(
            tokenizer, [{"role": "assistant", "content": _C}, user], (_C, _A)
        ) is not None,
        thinking_switch=_thinking_switch(tokenizer, [user]),
    )
    with _cache_lock:
        _cache[key] = found
    return found


def _thinking_switch(tokenizer, messages: list[dict]) -> bool:
    on = _probe(tokenizer, messages, (_A,), enable_thinking=True)
    off = _probe(tokenizer, messages, (_A,), enable_thinking=False)
    return on is not None and off is not None and on != off


def conform(messages: list[dict], found: TemplateTraits, *, generation_prompt: bool) -> list[dict]:
    """`messages` (system first, if any) reshaped so that a template with `found` traits
    renders them. With `generation_prompt`, the assistant turn about to be written counts
    as an assistant turn too (so a prompt renders as the prefix of its training example)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    if found.strict_alternation:
        merged: list[dict] = []
        for t in turns:
            if merged and merged[-1]["role"] == t["role"]:
                merged[-1]["content"] = f"{merged[-1]['content']}\n\n{t['content']}"
            else:
                merged.append(t)
        turns = merged
    speaks_first = turns[0]["role"] == "assistant" if turns else generation_prompt
    head: list[dict] = []
    if found.system_role:
        if system:
            head.append({"role": "system", "content": system})
        if speaks_first and not found.assistant_first:
            turns.insert(0, {"role": "user", "content": OPENING})
    elif system:
        # No system role: the card opens the first user turn, or is that turn.
        if turns and turns[0]["role"] == "user":
            turns[0] = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
        else:
            turns.insert(0, {"role": "user", "content": system})
    elif speaks_first and not found.assistant_first:
        turns.insert(0, {"role": "user", "content": OPENING})
    return head + turns


def render(tokenizer, messages: list[dict], *, generation_prompt: bool) -> str:
    """The template's text for `messages`, shaped by `conform`, thinking off where the
    template has the switch (persona chat is the persona's words, not its reasoning)."""
    found = traits(tokenizer)
    kwargs = {"enable_thinking": False} if found.thinking_switch else {}
    shaped = conform(messages, found, generation_prompt=generation_prompt)
    return tokenizer.apply_chat_template(shaped, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of rendered template text (its special tokens are in the text already)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
