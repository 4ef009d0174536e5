"""What a training step and the held-out proof are computed on: long examples lose whole
turns (never the prompt's head or the reply's start), identical examples count once, and
no held-out loss is on a reply the model trained on."""

import json

from core.chatimport import build_examples, load_export
from core.training.dataset import IGNORE, encode, encode_all, encode_fitting
from tests.training.conftest import REPEATING, SHAREGPT

SYSTEM = "You are Mara, a pirate captain who answers every question with a sea story."
HEAD = "<|im_start|>system\n" + SYSTEM


def _tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _labelled_text(tok, item):
    return tok.decode([t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE])


def test_long_examples_drop_whole_turns_and_keep_the_prompt_head(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    chat = [
        {"role": "user", "content": "first question, rather long: " + "blah " * 30},
        {"role": "assistant", "content": "Arr, the first answer."},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "Fine as a fair wind, matey."},
    ]
    size = len(encode(tok, SYSTEM, chat[2:])["input_ids"])
    item = encode_fitting(tok, SYSTEM, chat, size + 5)
    # exactly the encoding of the last exchange: whole turns went, nothing was cut inside one
    assert item == encode(tok, SYSTEM, chat[2:])
    assert tok.decode(item["input_ids"]).startswith(HEAD)


def test_a_reply_too_long_alone_loses_its_end_not_the_prompt(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    reply = "Arr, " + " ".join(f"wave{i}" for i in range(200))
    chat = [{"role": "user", "content": "tell me a long story"}, {"role": "assistant", "content": reply}]
    enc = encode_all(tok, SYSTEM, [{"messages": chat}], 96)
    assert (enc.truncated, enc.reply_cut, enc.dropped) == (1, 1, 0)
    item = enc.items[0]
    assert len(item["input_ids"]) == 96
    assert tok.decode(item["input_ids"]).startswith(HEAD)  # the old left cut lost exactly this
    assert reply.startswith(_labelled_text(tok, item).strip())  # the reply's start, its end cut

    # a system prompt that fills the whole length leaves no reply token: skipped and counted
    enc = encode_all(tok, SYSTEM * 20, [{"messages": chat}], 96)
    assert (enc.items, enc.dropped) == ([], 1)


def test_a_reply_seen_in_training_carries_no_heldout_loss(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Ahoy!", "seen": True},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "Then we sailed."},
    ]
    item = encode(tok, SYSTEM, chat)
    assert _labelled_text(tok, item) == "Then we sailed.<|im_end|>"
    assert "Ahoy!" in tok.decode(item["input_ids"])  # still there, as context
    plain = [{k: v for k, v in m.items() if k != "seen"} for m in chat]
    assert item["input_ids"] == encode(tok, SYSTEM, plain)["input_ids"]


def test_a_repeating_corpus_has_no_memorised_heldout_replies():
    """FastChat's dummy conversation: 120 examples, 16 distinct replies among 240."""
    ex = build_examples(load_export(REPEATING), "gpt")
    honesty = ex.report["held_out_honesty"]
    trained = {m["content"] for e in ex.train for m in e["messages"] if m["role"] == "assistant"}
    unseen = [m for e in ex.validation for m in e["messages"] if m["role"] == "assistant" and not m.get("seen")]
    assert all(m["content"] not in trained for m in unseen)
    # every held-out reply here was also trained on: the held-out split is empty, and says why
    assert ex.validation == [] and honesty["validation_examples_removed"] == 12
    assert honesty["validation_replies_seen_in_training"] >= 12
    assert len(ex.train) + honesty["validation_examples_removed"] + honesty["duplicate_examples_removed"] == 120


def test_identical_examples_count_once(tmp_path):
    convs = json.loads(SHAREGPT.read_text(encoding="utf-8"))
    doubled = tmp_path / "doubled.json"
    doubled.write_text(json.dumps(convs + convs[:30]), encoding="utf-8")  # 30 conversations exported twice
    once = build_examples(load_export(SHAREGPT), "gpt")
    twice = build_examples(load_export(doubled), "gpt")
    assert once.report["held_out_honesty"] == {
        "duplicate_examples_removed": 0, "validation_replies_seen_in_training": 0, "validation_examples_removed": 0,
    }
    assert twice.report["held_out_honesty"]["duplicate_examples_removed"] == 30
    keys = [tuple((m["role"], m["content"]) for m in e["messages"]) for e in twice.train + twice.validation]
    assert len(keys) == len(set(keys)) == len(once.train) + len(once.validation)


def test_the_synthetic_export_never_repeats_a_reply(tmp_path):
    from bench.train_synth_export import write_export

    ex = build_examples(load_export(write_export(tmp_path / "chat.txt", 1000)), "Mara")
    replies = [m["content"] for e in ex.train + ex.validation for m in e["messages"] if m["role"] == "assistant"]
    assert len(replies) > 400 and len(set(replies)) == len(replies)
    assert ex.report["held_out_honesty"]["validation_examples_removed"] == 0


def test_training_on_a_corpus_with_no_honest_heldout_is_refused_with_the_reason(service):
    import pytest

    from core.errors import ExportInvalid

    with pytest.raises(ExportInvalid, match="also appears earlier"):
        service.start(REPEATING, "gpt", persona_name="Vicuna", consent=True, config={"max_steps": 2})
