"""What each kind of chat template accepts, found by rendering, and prompts that fit it."""

import pytest

from core import chat_template
from core.chat_template import OPENING, TemplateTraits, conform, render, traits
from core.prompting import build_prompt, system_prompt

from .templates import GEMMA_LIKE, TEMPLATES, message as _msg, tokenizer_with

PERSONA = {"id": "mara", "name": "Captain Mara", "description": "A pirate.", "greeting": "Arr!"}


GREETING_FIRST = [_msg(1, "assistant", "Arr!", "mara", "Captain Mara"), _msg(2, "user", "Where to?")]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("chatml", TemplateTraits(system_role=True, strict_alternation=False, assistant_first=True, thinking_switch=False)),
        ("gemma", TemplateTraits(system_role=False, strict_alternation=True, assistant_first=False, thinking_switch=False)),
        ("mistral", TemplateTraits(system_role=True, strict_alternation=True, assistant_first=False, thinking_switch=False)),
        ("qwen3", TemplateTraits(system_role=True, strict_alternation=False, assistant_first=True, thinking_switch=True)),
    ],
)
def test_traits_are_found_by_rendering(toks, name, expected):
    assert traits(toks[name]) == expected


def test_traits_are_probed_once_per_template(tokenizer_dir, monkeypatch):
    tok = tokenizer_with(tokenizer_dir, GEMMA_LIKE + "{# a template of its own #}")
    calls = []
    real = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda *a, **k: calls.append(1) or real(*a, **k))
    traits(tok)
    probes = len(calls)
    assert probes >= 4
    render(tok, [{"role": "user", "content": "hi"}], generation_prompt=True)
    render(tok, [{"role": "user", "content": "again"}], generation_prompt=True)
    assert len(calls) == probes + 2  # one render each, no new probing
    assert len(chat_template._cache) >= 1


def test_the_card_heads_the_first_user_turn_without_a_system_role(toks):
    tok = toks["gemma"]
    with pytest.raises(Exception, match="System role not supported"):  # what a naive render does
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
    prompt = build_prompt(tok, PERSONA, [_msg(1, "user", "Where to?")], budget=4000)
    text = tok.decode(prompt.input_ids)
    card = system_prompt(PERSONA)
    assert text == f"<start_of_turn>user\n{card}\n\nWhere to?<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_conversation_opened_by_the_greeting_renders_everywhere(toks, name):
    tok = toks[name]
    text = tok.decode(build_prompt(tok, PERSONA, GREETING_FIRST, budget=4000).input_ids)
    card = system_prompt(PERSONA)
    assert card in text and "Arr!" in text and "Where to?" in text
    assert text.index(card) < text.index("Arr!") < text.index("Where to?")


def test_greeting_first_layouts(toks):
    card = system_prompt(PERSONA)
    gemma = toks["gemma"].decode(build_prompt(toks["gemma"], PERSONA, GREETING_FIRST, budget=4000).input_ids)
    # No system role: the card itself is the user turn before the greeting; no invented words.
    assert gemma.startswith(f"<start_of_turn>user\n{card}<end_of_turn>\n<start_of_turn>model\nArr!<end_of_turn>")
    assert OPENING not in gemma
    mistral = toks["mistral"].decode(build_prompt(toks["mistral"], PERSONA, GREETING_FIRST, budget=4000).input_ids)
    # A system role but no assistant-first: a neutral stage direction stands before the greeting.
    assert mistral == f" [INST] {card}\n\n{OPENING} [/INST] Arr!{toks['mistral'].eos_token} [INST] Where to? [/INST]"
    chatml = toks["chatml"].decode(build_prompt(toks["chatml"], PERSONA, GREETING_FIRST, budget=4000).input_ids)
    assert OPENING not in chatml and "<|im_start|>assistant\nArr!<|im_end|>" in chatml  # accepted as it is


def test_strict_templates_get_same_role_turns_merged(toks):
    tok = toks["mistral"]
    path = [_msg(1, "user", "Hello?"), _msg(2, "user", "Anyone aboard?")]  # a reply that failed in between
    text = tok.decode(build_prompt(tok, PERSONA, path, budget=4000).input_ids)
    assert text.endswith("Hello?\nAnyone aboard? [/INST]")
    shaped = conform(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
        traits(tok),
        generation_prompt=False,
    )
    assert shaped == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b\n\nc"}]
    # A template that takes any order keeps the turns as they are.
    assert len(conform([{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}], traits(toks["chatml"]), generation_prompt=False)) == 2


def test_other_personas_speak_under_their_names_on_the_user_side(toks):
    path = [
        _msg(1, "user", "Hello, both of you."),
        _msg(2, "assistant", "Good day.", "quill", "Professor Quill"),
        _msg(3, "assistant", "Who asked you?", "byte", "Byte"),
        _msg(4, "user", "And you, captain?"),
    ]
    for name in ("gemma", "mistral", "chatml"):
        prompt = build_prompt(toks[name], PERSONA, path, budget=4000)
        turns = [m for m in prompt.messages if m["role"] != "system"]
        assert turns == [{"role": "user", "content": "User: Hello, both of you.\nProfessor Quill: Good day.\nByte: Who asked you?\nUser: And you, captain?"}]


def test_thinking_is_off_for_persona_chat(toks):
    tok = toks["qwen3"]
    text = tok.decode(build_prompt(tok, PERSONA, [_msg(1, "user", "Where to?")], budget=4000).input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    naive = tok.apply_chat_template([{"role": "user", "content": "Where to?"}], tokenize=False, add_generation_prompt=True)
    assert naive.endswith("<|im_start|>assistant\n")  # without the switch the model would think first
    # A template without the switch is never passed it.
    chatml = toks["chatml"].decode(build_prompt(toks["chatml"], PERSONA, [_msg(1, "user", "Where to?")], budget=4000).input_ids)
    assert "<think>" not in chatml


def test_truncation_still_keeps_the_card_with_a_strict_template(toks):
    tok = toks["gemma"]
    path = []
    for i in range(40):
        path += [_msg(2 * i, "user", f"question {i} " + "word " * 20), _msg(2 * i + 1, "assistant", f"answer {i} " + "word " * 20, "mara")]
    path.append(_msg(999, "user", "the final question"))
    full = build_prompt(tok, PERSONA, path, budget=100_000)
    prompt = build_prompt(tok, PERSONA, path, budget=len(full.input_ids) // 3)
    text = tok.decode(prompt.input_ids)
    assert len(prompt.input_ids) <= len(full.input_ids) // 3 and prompt.dropped_turns > 0
    assert text.startswith(f"<start_of_turn>user\n{system_prompt(PERSONA)}")
    assert text.endswith("the final question<end_of_turn>\n<start_of_turn>model\n")
