"""Token choice (core/engine/sampling.py): after top-k, top-p and the draw run on the kept
tokens only; the draw follows the same distribution as transformers' warpers over the whole
vocabulary, and never picks a token they remove."""

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from core.engine.base import GenerationSettings
from core.engine.sampling import RowSampler, choose

VOCAB = 1000


def _logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, VOCAB, generator=g) * 3


def _reference_probs(logits, s: GenerationSettings):
    """transformers' warpers over the whole vocabulary, in generate's order."""
    x = logits.clone()
    for warp in (TemperatureLogitsWarper(s.temperature), TopKLogitsWarper(s.top_k), TopPLogitsWarper(s.top_p)):
        x = warp(None, x)
    return torch.softmax(x, dim=-1)[0]


def _draws(s: GenerationSettings, logits, n):
    sampler = RowSampler(s, eos_ids=())
    ids = torch.zeros(1, 1, dtype=torch.long)
    return torch.tensor([choose([sampler], [ids], logits.clone(), [0])[0] for _ in range(n)])


def test_draws_follow_the_warped_distribution_and_stay_in_the_nucleus():
    s = GenerationSettings(temperature=0.9, top_k=20, top_p=0.8, repetition_penalty=1.0, seed=5)
    logits = _logits()
    probs = _reference_probs(logits, s)
    allowed = set(torch.nonzero(probs).view(-1).tolist())
    assert 2 < len(allowed) < 20  # top-p cut inside the top 20
    n = 4000
    draws = _draws(s, logits, n)
    assert set(draws.tolist()) <= allowed
    freq = torch.bincount(draws, minlength=VOCAB).float() / n
    # Each kept token's share within 4 standard deviations of a binomial draw.
    sd = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 4 * sd + 1e-3).all()


def test_a_seed_gives_the_same_draws_and_a_row_in_a_group_draws_as_alone():
    s = GenerationSettings(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0, seed=11)
    logits = torch.cat([_logits(1), _logits(2)])
    assert torch.equal(_draws(s, logits[:1], 30), _draws(s, logits[:1], 30))
    alone = [RowSampler(s, ()) for _ in range(2)]
    together = [RowSampler(s, ()) for _ in range(2)]
    ids = [torch.zeros(1, 1, dtype=torch.long)] * 2
    for _ in range(20):
        a = [choose([alone[i]], [ids[i]], logits[i : i + 1].clone(), [0])[0] for i in range(2)]
        assert choose(together, ids, logits.clone(), [0, 0]) == a


def test_without_top_k_the_whole_vocabulary_is_warped():
    s = GenerationSettings(temperature=1.0, top_k=0, top_p=0.5, repetition_penalty=1.0, seed=3)
    logits = _logits(4)
    x = TopPLogitsWarper(0.5)(None, logits.clone())
    allowed = set(torch.nonzero(torch.isfinite(x[0])).view(-1).tolist())
    assert set(_draws(s, logits, 300).tolist()) <= allowed


def test_ties_with_the_kth_token_are_kept_as_the_warper_keeps_them():
    logits = _logits(5)
    logits[0, 100:130] = 50.0  # 30 tokens share the top value: top-k of 5 keeps all 30
    s = GenerationSettings(temperature=0.7, top_k=5, top_p=1.0, repetition_penalty=1.0, seed=9)
    probs = _reference_probs(logits, s)
    assert int((probs > 0).sum()) == 30
    draws = set(_draws(s, logits, 600).tolist())
    assert draws <= set(range(100, 130)) and len(draws) > 20
    logits[0, 100:110] = 60.0  # 10 ties: inside the window topk returns
    draws = set(_draws(s, logits, 300).tolist())
    assert draws <= set(range(100, 110)) and len(draws) > 5
