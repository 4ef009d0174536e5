"""Prompt rendering through the model's own chat template, and truncation."""

import pytest
from transformers import AutoTokenizer

from core.prompting import build_prompt, fill_placeholders, history_turns, system_prompt

PERSONA = {
    "id": "mara",
    "name": "Captain Mara",
    "description": "Captains the {{char}}'s sloop.",
    "personality": "Loud and bold.",
    "scenario": "{{user}} joins the crew.",
    "example_dialogue": "<START>\n{{user}}: Hi\n{{char}}: Ahoy!\n<START>\n{{user}}: Bye\n{{char}}: Fair winds.",
    "greeting": "Arr!",
    "system_prompt": "",
}


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _msg(i, role, text, persona_id=None, persona_name=None):
    return {"id": i, "role": role, "content": text, "persona_id": persona_id, "persona_name": persona_name}


def test_system_prompt_carries_the_card_with_placeholders_filled():
    text = system_prompt(PERSONA)
    assert text.startswith("You are Captain Mara.")
    for part in ("Captains the Captain Mara's sloop.", "Loud and bold.", "User joins the crew.", "User: Hi\nCaptain Mara: Ahoy!", "Fair winds."):
        assert part in text
    assert "{{" not in text and "<START>" not in text


def test_custom_system_prompt_replaces_the_opening():
    text = system_prompt({**PERSONA, "system_prompt": "Speak only in haiku, {{char}}."})
    assert text.startswith("Speak only in haiku, Captain Mara.")


def test_placeholders_are_case_insensitive():
    assert fill_placeholders("{{Char}} and {{USER}} and <BOT>", "Ann", "Bo") == "Ann and Bo and Ann"


def test_rendered_through_the_chat_template(tok):
    path = [_msg(1, "assistant", "Arr!", "mara", "Captain Mara"), _msg(2, "user", "Where to?")]
    prompt = build_prompt(tok, PERSONA, path, budget=2000)
    text = tok.decode(prompt.input_ids)
    assert text.startswith("<|im_start|>system\nYou are Captain Mara.")
    assert text.endswith("<|im_start|>user\nWhere to?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nArr!<|im_end|>" in text
    assert prompt.dropped_turns == 0


def test_replies_of_other_personas_are_labelled():
    # Another persona's words are not this voice's own: a user-side line under its name, as
    # other people's lines are in a training example made from a group chat.
    path = [_msg(1, "user", "hi"), _msg(2, "assistant", "Hello there.", "quill", "Professor Quill"), _msg(3, "user", "and you?")]
    turns = history_turns(path, PERSONA)
    assert turns == [{"role": "user", "content": "User: hi\nProfessor Quill: Hello there.\nUser: and you?"}]
    own = history_turns([_msg(1, "assistant", "Arr!", "mara", "Captain Mara"), _msg(2, "user", "hi")], PERSONA)
    assert own == [{"role": "assistant", "content": "Arr!"}, {"role": "user", "content": "hi"}]


def test_truncation_drops_oldest_turns_never_the_system_prompt(tok):
    path = []
    for i in range(60):
        path.append(_msg(2 * i, "user", f"question number {i} " + "word " * 20))
        path.append(_msg(2 * i + 1, "assistant", f"answer number {i} " + "word " * 20, "mara", "Captain Mara"))
    path.append(_msg(999, "user", "the final question"))
    full = build_prompt(tok, PERSONA, path, budget=100_000)
    budget = len(full.input_ids) // 3
    prompt = build_prompt(tok, PERSONA, path, budget=budget)
    assert len(prompt.input_ids) <= budget
    assert prompt.dropped_turns > 0
    assert prompt.messages[0]["role"] == "system" and prompt.messages[0]["content"] == system_prompt(PERSONA)
    assert prompt.messages[-1]["content"] == "the final question"
    kept = [m["content"] for m in prompt.messages[1:]]
    originals = [m["content"] for m in path]
    assert kept == originals[len(originals) - len(kept):]  # a suffix: the oldest went first


def test_a_single_huge_message_keeps_its_end(tok):
    path = [_msg(1, "user", "start " + "filler " * 3000 + "THE END")]
    prompt = build_prompt(tok, PERSONA, path, budget=400)
    assert len(prompt.input_ids) <= 400
    assert prompt.messages[0]["content"] == system_prompt(PERSONA)
    assert prompt.messages[-1]["content"].endswith("THE END")
