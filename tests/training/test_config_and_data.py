"""TrainConfig validation and automatic choices; example rendering and loss masks."""

import pytest

from core.training.config import TrainConfig, TrainConfigInvalid, auto_seq_len, plan
from core.training.dataset import IGNORE, Collator, encode, encode_all, encode_fitting


def test_defaults_are_valid_and_documented():
    cfg = TrainConfig()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.batch_size) == (16, 32.0, 0.0, 8)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert TrainConfig.from_dict(cfg.as_dict()) == cfg


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("rank", 0, "rank"),
        ("learning_rate", 1.0, "learning rate"),
        ("batch_size", 0, "Batch size"),
        ("micro_batch_size", 3, "divide"),
        ("max_steps", 0, "Steps"),
        ("dropout", 1.0, "dropout"),
        ("val_fraction", 0.0, "held-out"),
        ("lr_scheduler", "exotic", "scheduler"),
        ("max_seq_len", 8, "Sequence length"),
        ("target_modules", [], "target module"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(TrainConfigInvalid, match=message):
        TrainConfig(**{field: value})


def test_unknown_setting_is_an_error():
    with pytest.raises(TrainConfigInvalid, match="Unknown training settings: stepz"):
        TrainConfig.from_dict({"stepz": 3})


def test_plan_scales_with_the_data():
    cfg = TrainConfig()
    small = plan(cfg, 20, 3, [100] * 20, "cpu")
    assert small.steps == cfg.min_auto_steps and small.optimizer == "adamw_torch" and not small.gradient_checkpointing
    mid = plan(cfg, 180, 20, [150] * 180, "cpu")
    assert mid.steps == 2 * 23  # two epochs of ceil(180 / 8) steps
    big = plan(cfg, 50_000, 100, [150] * 10, "cuda")
    assert big.steps == big.step_cap == 150 and big.optimizer == "paged_adamw_8bit" and big.gradient_checkpointing
    fixed = plan(TrainConfig(max_steps=7, batch_size=4, micro_batch_size=2), 100, 10, [50], "cpu")
    assert (fixed.steps, fixed.grad_accum, fixed.warmup_steps) == (7, 2, 1)
    assert 1 <= mid.eval_every <= mid.steps and 5 <= mid.save_every <= 25
    assert auto_seq_len([90] * 95 + [900] * 5) == 128
    assert auto_seq_len([300] * 100) == 320
    assert auto_seq_len([5000]) == 1024


def _tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


CHAT = [
    {"role": "assistant", "content": "Ahoy there"},
    {"role": "user", "content": "how are you?"},
    {"role": "assistant", "content": "Arr, fine as a fair wind"},
]


def test_only_assistant_tokens_have_labels(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    item = encode(tok, "You are Mara.", CHAT)
    labelled = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE]
    assert tok.decode(labelled) == "Ahoy there<|im_end|>Arr, fine as a fair wind<|im_end|>"
    assert all(lab in (IGNORE, t) for t, lab in zip(item["input_ids"], item["labels"]))
    text = tok.decode(item["input_ids"])
    # the served format: the same chat template and the persona card as the system message
    assert text.startswith("<|im_start|>system\nYou are Mara.<|im_end|>\n")
    assert "how are you?" in text


def test_long_examples_lose_their_oldest_turns_first(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    long_chat = [{"role": "user", "content": "word " * 200}, *CHAT]
    item = encode_fitting(tok, "You are Mara.", long_chat, 64)
    text = tok.decode(item["input_ids"])
    assert len(item["input_ids"]) <= 64
    assert text.startswith("<|im_start|>system\nYou are Mara.") and "fair wind" in text and "word" not in text
    enc = encode_all(tok, "You are Mara.", [{"messages": long_chat}, {"messages": CHAT}], 64)
    assert enc.truncated == 1 and enc.dropped == 0 and len(enc.items) == 2


def test_collator_masks_padding(tokenizer_dir):
    tok = _tok(tokenizer_dir)
    a, b = encode(tok, "S", CHAT), encode(tok, "S", CHAT[:1])
    batch = Collator(tok.pad_token_id)([a, b])
    n = len(b["input_ids"])
    assert batch["input_ids"].shape[1] == len(a["input_ids"])
    assert batch["attention_mask"][1, n:].sum() == 0 and (batch["labels"][1, n:] == IGNORE).all()
