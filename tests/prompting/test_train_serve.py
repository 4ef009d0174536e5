"""A persona is served with the prompt it was trained with, on every kind of template.

For the same turns, the tokens of a training example before its last reply must be the
chat service's prompt token for token, and the loss must start right there.
"""

import pytest

from core.prompting import build_prompt, history_turns, system_prompt
from core.training.dataset import IGNORE, encode, encode_all

from .templates import TEMPLATES, message as _msg

PERSONA = {"id": "mara", "name": "Captain Mara", "description": "A pirate of few words.", "greeting": "Arr!"}


CONVERSATIONS = {
    "plain": [_msg(1, "user", "Where to?")],
    "greeting first": [_msg(1, "assistant", "Arr!", "mara", "Captain Mara"), _msg(2, "user", "Where to?")],
    "several turns": [
        _msg(1, "user", "Ahoy."),
        _msg(2, "assistant", "Ahoy yourself.", "mara"),
        _msg(3, "user", "Where to?"),
    ],
    "group": [
        _msg(1, "user", "Hello, both of you."),
        _msg(2, "assistant", "Good day.", "quill", "Professor Quill"),
        _msg(3, "user", "Where to, captain?"),
    ],
}


def _check_same_prefix(tok, path, reply):
    prompt = build_prompt(tok, PERSONA, path, budget=4000)
    example = [*history_turns(path, PERSONA), {"role": "assistant", "content": reply}]
    item = encode(tok, system_prompt(PERSONA), example)
    n = len(prompt.input_ids)
    assert item["input_ids"][:n] == prompt.input_ids  # the served prompt, token for token
    assert item["labels"][n] != IGNORE  # the loss starts with the reply's first token
    assert tok.decode(item["input_ids"][n:]).lstrip().startswith(reply)
    return item


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_training_example_starts_with_the_served_prompt(toks, template, conversation):
    _check_same_prefix(toks[template], CONVERSATIONS[conversation], "To Tortuga, and be quick.")


@pytest.mark.parametrize("template", ["gemma", "mistral"])
def test_an_example_that_opens_on_the_speaker_keeps_that_reply_in_the_loss(toks, template):
    tok = toks[template]
    example = [
        {"role": "assistant", "content": "Arr, who goes there?"},
        {"role": "user", "content": "A friend."},
        {"role": "user", "content": "Two friends, in fact."},  # a strict template needs them merged
        {"role": "assistant", "content": "Then welcome aboard."},
    ]
    enc = encode_all(tok, system_prompt(PERSONA), [{"messages": example}], max_len=4000)
    assert enc.dropped == 0
    learned = tok.decode([t for t in enc.items[0]["labels"] if t != IGNORE])
    assert "Arr, who goes there?" in learned and "Then welcome aboard." in learned
    assert "A friend." not in learned and system_prompt(PERSONA)[:20] not in learned


def test_thinking_template_trains_with_the_empty_block_it_is_served_with(toks):
    tok = toks["qwen3"]
    item = _check_same_prefix(tok, CONVERSATIONS["plain"], "To Tortuga.")
    text = tok.decode(item["input_ids"])
    assert "<think>\n\n</think>\n\nTo Tortuga." in text
    learned = tok.decode([t for t in item["labels"] if t != IGNORE])
    assert "think>" not in learned  # the empty block is prompt, not the persona's words
