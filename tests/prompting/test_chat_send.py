"""Full sends through the chat service on the tiny model, with templates of each kind."""

import pytest

from core.chat import ChatService
from core.engine import GenerationSettings
from core.prompting import system_prompt
from core.starter import seed_starters
from storage.store import Store

from .templates import GEMMA_LIKE, MISTRAL_LIKE, QWEN3_LIKE, R1_LIKE


def settings(seed=3, n=8):
    return GenerationSettings(temperature=0.8, max_new_tokens=n, seed=seed)


@pytest.fixture
def make_chat(tiny_engine, chorus_home, monkeypatch):
    """A chat service whose engine uses `template`; records each prompt it is asked."""
    prompts: list[str] = []
    real_stream = tiny_engine.stream

    def spy(input_ids, *args, **kwargs):
        prompts.append(tiny_engine.tokenizer.decode(input_ids))
        return real_stream(input_ids, *args, **kwargs)

    def make(template, stream=None):
        monkeypatch.setattr(tiny_engine.tokenizer, "chat_template", template)
        monkeypatch.setattr(tiny_engine, "stream", stream or spy)
        store = Store()
        seed_starters(store)
        return ChatService(store, tiny_engine), prompts

    return make


def _events(stream):
    events = list(stream)
    assert events[-1].kind == "done"
    return events


@pytest.mark.parametrize("template", [GEMMA_LIKE, MISTRAL_LIKE], ids=["gemma", "mistral"])
def test_greeting_first_and_a_persona_switch_on_strict_templates(make_chat, template):
    chat, prompts = make_chat(template)
    conv = chat.start_conversation("captain-mara")  # opens with the persona's greeting
    mara = chat.store.personas.get("captain-mara")
    greeting = chat.store.conversations.path(conv["id"])[0]["content"]
    _events(chat.send(conv["id"], "captain-mara", "Where to?", settings()))
    _events(chat.send(conv["id"], "juniper", "And you, Juniper?", settings()))
    first, second = prompts
    card = system_prompt(mara)
    assert card in first and first.index(card) < first.index(greeting) < first.index("Where to?")
    if template is GEMMA_LIKE:  # no system role: the card is the user turn before the greeting
        assert first.startswith(f"<start_of_turn>user\n{card}<end_of_turn>\n<start_of_turn>model\n{greeting}")
    # Juniper sees the captain's words on the user side, under her name.
    assert f"Captain Mara: {greeting}" in second and system_prompt(chat.store.personas.get("juniper")) in second
    names = [m["persona_name"] for m in chat.store.conversations.path(conv["id"]) if m["role"] == "assistant"]
    assert names == ["Captain Mara", "Captain Mara", "Juniper"]


def test_thinking_is_off_and_a_streamed_block_never_reaches_the_persona(make_chat, tiny_engine):
    real_stream = tiny_engine.stream
    prompts = []

    def thinking_model(input_ids, *args, **kwargs):
        # The tiny model cannot think; this one writes a block split across pieces first.
        prompts.append(tiny_engine.tokenizer.decode(input_ids))
        yield from ["<thi", "nk>\nA port... Zqx", "vort, I think.</th", "ink>\n", "\n"]
        yield from real_stream(input_ids, *args, **kwargs)

    chat, _ = make_chat(QWEN3_LIKE, thinking_model)
    conv = chat.start_conversation("captain-mara")
    events = _events(chat.send(conv["id"], "captain-mara", "Where to?", settings(n=10)))
    assert prompts[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking=False
    deltas = [e.text for e in events if e.kind == "delta"]
    leaks = ("<thi", "nk>", "</th", "ink>", "Zqx", "vort")
    assert deltas and not any(bit in d for d in deltas for bit in leaks)
    saved = events[-1].message
    assert saved["content"] == "".join(deltas).strip() and "Zqx" not in saved["content"]
    stored = chat.store.conversations.path(conv["id"])[-1]
    assert stored["meta"]["thinking"] == "A port... Zqxvort, I think." and "thinking_unclosed" not in stored["meta"]
    # The next prompt carries the reply, never the thought.
    _events(chat.send(conv["id"], "captain-mara", "Why?", settings(n=4)))
    assert "Zqx" not in prompts[1]


def test_a_reply_that_ends_mid_thought_saves_no_thought_as_words(make_chat):
    def stuck(input_ids, *args, **kwargs):
        yield from ["Hm. <think>", "still pondering the"]

    chat, _ = make_chat(QWEN3_LIKE, stuck)
    conv = chat.start_conversation("byte")
    events = _events(chat.send(conv["id"], "byte", "Hi", settings()))
    assert [e.text for e in events if e.kind == "delta"] == ["Hm. "]
    meta = chat.store.conversations.path(conv["id"])[-1]["meta"]
    assert events[-1].message["content"] == "Hm." and meta["thinking"] == "still pondering the" and meta["thinking_unclosed"]


def test_a_prompt_that_opens_the_block_starts_the_reply_as_thinking(make_chat):
    def r1(input_ids, *args, **kwargs):  # thinking began in the prompt: only the close comes
        yield from ["the port is ", "Tortuga</thi", "nk>\n\nAye, ", "Tortuga."]

    chat, _ = make_chat(R1_LIKE, r1)
    conv = chat.start_conversation("byte")
    events = _events(chat.send(conv["id"], "byte", "Where to?", settings()))
    assert "".join(e.text for e in events if e.kind == "delta") == "Aye, Tortuga."
    assert chat.store.conversations.path(conv["id"])[-1]["meta"]["thinking"] == "the port is Tortuga"
