"""The voice-match measure (core/training/voice.py) on synthetic group chats.

Mara talks in a group with three others (bench/voice_export.py): like a pirate in the
"strong" chat, nearly like the others in the "close" one. Replies are real chat turns or
freshly generated lines from the same pools, so no model is needed except in the last
test, which wires the measure to evaluate.sample_replies on the tiny model.
"""

import copy
import math
import random
from functools import partial

import pytest

from bench.train_synth_export import TOPICS, reply, write_export
from bench.voice_export import PLAIN, write_group_export
from core.chatimport import build_examples, load_export
from core.training.voice import (
    MIN_K,
    NOT_ENOUGH,
    VoiceJudge,
    _split_group_turn,
    measure_voice,
    replies_from,
    voice_data,
    voice_prompts,
    wilson,
)
from core.training.voice_features import moved_features


def _examples(path):
    return build_examples(load_export(path), "Mara", max_turns=16, val_fraction=0.1)


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    return _examples(write_group_export(tmp_path_factory.mktemp("voice") / "strong.txt", style="strong", messages=2400))


@pytest.fixture(scope="module")
def close(tmp_path_factory):
    return _examples(write_group_export(tmp_path_factory.mktemp("voice") / "close.txt", style="close", messages=2400))


def pirate_lines(n, seed=99):
    rng = random.Random(seed)
    return [reply(rng, rng.choice(TOPICS)) for _ in range(n)]


def plain_lines(n, seed=98):
    rng = random.Random(seed)
    return [rng.choice(PLAIN).format(t=rng.choice(TOPICS)) for _ in range(n)]


def fixed_replies(base, adapter):
    """A `Replies` that answers with given lines (as a model would), recording its calls."""
    calls = []

    def run(prompts):
        calls.append(len(prompts))
        return [{"prompt": p["turns"][-1]["content"], "real": p["real"], "base": base[i], "adapter": adapter[i]} for i, p in enumerate(prompts)]

    run.calls = calls
    return run


def test_strong_voice_real_high_plain_low_adapter_between(strong):
    k = 24
    half = pirate_lines(k)[: k // 2] + plain_lines(k)[k // 2 :]
    result = measure_voice(strong, fixed_replies(plain_lines(k), half), k=k)
    d = result.as_dict()
    assert d["judged"] and d["reason"] is None
    assert d["k"] >= 20  # about 24: one held-out example may have no context before its reply
    assert d["voice_match_real"] >= 0.9
    assert d["voice_match_base"] <= 0.1
    assert 0.3 <= d["voice_match_adapter"] <= 0.7
    assert 0.3 <= d["gap_closed"] <= 0.7
    for name in ("real", "base", "adapter"):
        lo, hi = d[f"voice_match_{name}_ci"]
        assert lo <= d[f"voice_match_{name}"] <= hi
    assert "only" in d["caveat"] and str(d["k"]) in d["caveat"]
    assert f"of {d['k']} held-out replies" in d["summary"] and "way from the base" in d["summary"]
    assert len(d["replies"]) == d["k"] and set(d["replies"][0]) == {"prompt", "real", "base", "adapter"}
    # Generated pirate lines count as Mara's whatever their topic; plain ones do not.
    all_pirate = measure_voice(strong, fixed_replies(plain_lines(k), pirate_lines(k, seed=5)), k=k)
    assert all_pirate.adapter.value >= 0.9


def test_features_name_what_moved_towards_the_real_replies(strong):
    k = 24
    d = measure_voice(strong, fixed_replies(plain_lines(k), pirate_lines(k)), k=k).as_dict()
    words = [f for f in d["features"] if f["feature"].startswith("word")]
    assert words, d["features"]
    for f in d["features"]:
        # Each named feature moved from the base towards the real replies.
        assert abs(f["adapter"] - f["real"]) < abs(f["base"] - f["real"])
        assert "like the real messages" in f["text"]
    pirate = {"arr", "ye", "be", "matey", "me", "ahoy", "blimey", "avast", "har", "lad", "yo", "ho", "savvy", "ye'll", "hearty"}
    assert any(f["feature"].split("'")[1] in pirate for f in words), words


def test_features_skip_what_overshot_the_real_replies():
    real, base = ["Ahoy there"] * 10, ["hey there"] * 10
    adapter = ["AHOY THERE"] * 6 + ["hey there"] * 4
    named = {f["feature"]: f for f in moved_features(real, base, adapter)}
    assert "word 'ahoy'" in named  # 6 of 10 against none, like the real 10 of 10
    # Capital letters: 11% of the real replies' letters, none of the base's, 60% of the
    # adapter's: further from the real replies than the base was, so not "like" them.
    assert "capitals" not in named


def test_close_style_ceiling_still_above_floor(close):
    k = 24
    d = measure_voice(close, fixed_replies(plain_lines(k), plain_lines(k, seed=3)), k=k).as_dict()
    assert d["judged"]
    assert d["voice_match_real"] >= 0.6  # her small habits are learnable from the training split
    assert d["voice_match_real"] > d["voice_match_base"] + 0.3


def test_one_other_speaker_is_not_judged_and_generates_nothing(tmp_path):
    examples = _examples(write_export(tmp_path / "pair.txt", messages=1000))  # Mara and Alex only
    replies = fixed_replies([], [])
    result = measure_voice(examples, replies)
    d = result.as_dict()
    assert not d["judged"] and d["reason"].startswith(NOT_ENOUGH)
    assert "1 other speaker" in d["reason"]
    assert d["summary"] == f"Voice match: {d['reason']}."
    assert d["voice_match_real"] is d["voice_match_base"] is d["voice_match_adapter"] is None
    assert replies.calls == []  # nothing is generated for a figure that cannot be given


def test_too_few_messages_is_not_judged(tmp_path):
    examples = _examples(write_group_export(tmp_path / "tiny.txt", messages=80))
    result = measure_voice(examples, fixed_replies([], []))
    assert not result.judged and result.reason.startswith(NOT_ENOUGH)
    assert "turns" in result.reason


def test_too_few_heldout_contexts_is_not_judged(strong):
    result = measure_voice(strong, fixed_replies([], []), k=MIN_K - 1)
    assert not result.judged and f"only {MIN_K - 1} held-out" in result.reason


@pytest.mark.parametrize("hits,k", [(0, 24), (12, 24), (24, 24), (7, 19), (1, 10)])
def test_wilson_interval(hits, k):
    z = 1.959964  # the 97.5% normal quantile
    p = hits / k
    centre = (p + z * z / (2 * k)) / (1 + z * z / k)
    half = z * math.sqrt(p * (1 - p) / k + z * z / (4 * k * k)) / (1 + z * z / k)
    lo, hi = wilson(hits, k)
    assert lo == pytest.approx(centre - half, abs=1e-6) and hi == pytest.approx(centre + half, abs=1e-6)
    assert 0 <= lo <= p <= hi <= 1


def test_wilson_known_values():
    assert wilson(0, 24) == pytest.approx((0.0, 3.8415 / 27.8415), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson(12, 24) == pytest.approx((0.3143, 0.6857), abs=1e-4)


def test_deterministic(strong):
    k = 24

    def once():
        d = measure_voice(strong, fixed_replies(plain_lines(k), pirate_lines(k)[:12] + plain_lines(k)[12:]), k=k).as_dict()
        d.pop("seconds")
        return d

    assert once() == once()


def test_heldout_split_never_reaches_the_fit(strong):
    data = voice_data(strong)
    judge = VoiceJudge.fit(data.target, data.others)
    poisoned = copy.deepcopy(strong)
    for ex in poisoned.validation:
        for m in ex["messages"]:
            m["content"] = "ZZZ poisoned held-out line, arr arr arr 🦜🦜"
    data2 = voice_data(poisoned)
    assert (data2.target, data2.others) == (data.target, data.others)
    assert (VoiceJudge.fit(data2.target, data2.others).fingerprint() == judge.fingerprint()).all()
    # Control: poisoning the training split does change the fit.
    poisoned.train[0]["messages"][-1]["content"] = "ZZZ poisoned training line"
    data3 = voice_data(poisoned)
    assert not (VoiceJudge.fit(data3.target, data3.others).fingerprint() == judge.fingerprint()).all()


def test_group_turns_are_split_per_speaker_without_names():
    assert _split_group_turn("Bob: hi\nmore\nCarol Ann: hey", ["Bob", "Carol Ann"]) == ["hi\nmore", "hey"]
    assert _split_group_turn("no prefix here\nsecond line", []) == ["no prefix here\nsecond line"]


def test_prompts_spread_over_the_heldout_split():
    validation = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(100)
    ]
    prompts = voice_prompts(validation, 24)
    picked = [int(p["real"][1:]) for p in prompts]
    assert len(picked) == 24 and picked == sorted(picked)
    assert picked[0] < 5 and picked[-1] > 95
    assert len(voice_prompts(validation[:15], 24)) == 15  # fewer on a small export


def test_replies_from_uses_the_same_seed_for_base_and_adapter():
    seen = []

    def generate(turns, adapter_on, seed):
        seen.append((turns[-1]["content"], adapter_on, seed))
        return f" {'adapter' if adapter_on else 'base'} {seed} "

    prompts = [{"turns": [{"role": "user", "content": f"q{i}"}], "real": f"a{i}"} for i in range(3)]
    rows = replies_from(generate, seed=7)(prompts)
    assert seen == [(f"q{i}", on, 7 + i) for i in range(3) for on in (False, True)]
    assert rows[1] == {"prompt": "q1", "real": "a1", "base": "base 8", "adapter": "adapter 8"}


def test_measure_takes_sample_replies_from_the_training_evaluation(strong, tiny_model_dir, monkeypatch):
    """The worker's wiring: evaluate.sample_replies as the replies callable. Two contexts
    keep it quick (generation on a busy CPU costs about a second a reply even here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.training.evaluate import sample_replies

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.train()  # as in the training process: never eval mode (see qlora.py)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    persona = {"name": "Mara", "system_prompt": "You are Mara."}
    replies = partial(sample_replies, model, tokenizer, persona, seed=0, max_new_tokens=3)
    monkeypatch.setattr("core.training.voice.MIN_K", 2)
    d = measure_voice(strong, replies, k=2).as_dict()
    assert d["judged"] and d["k"] == 2
    assert d["voice_match_real"] == 1.0
    assert d["seconds"]["replies"] > 0 and d["seconds"]["measure"] > 0
