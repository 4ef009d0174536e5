"""Comparing logits that different kernel sequences computed: within bf16 rounding, and the
same greedy tokens.

Bitwise equality holds only where the same kernels run on the same shapes. Elsewhere (a
batch against its rows alone, torch.mv against F.linear, one CPU's BLAS against another's)
the same arithmetic is summed in another order, and an activation may round to the
neighbouring bf16 value (bf16 keeps 8 significant bits: a step is 2**-7 of the value's
power of two). Such a flip moves the logits by about one bf16 step at the logits' own
scale; the tests allow a few (ULPS) at the largest logit of each position, far below what a
wrong adapter or a mixed voice does (whole units), and require the greedy token to agree.
"""

from __future__ import annotations

import math

import torch

ULPS = 4  # bf16 steps at the largest logit of a position


def bf16_step(value: float) -> float:
    """The spacing of bf16 numbers at |value| (2**-7 of its power of two)."""
    value = abs(float(value))
    return 2.0 ** (math.floor(math.log2(value)) - 7) if value > 0 else 2.0**-133


def assert_within_bf16_rounding(ours: torch.Tensor, theirs: torch.Tensor, ulps: int = ULPS, argmax: bool = True) -> None:
    """`ours` and `theirs` are (..., vocab) logits: each position within `ulps` bf16 steps
    of the other at its largest logit, and (with `argmax`) the same greedy token."""
    assert ours.shape == theirs.shape
    a, b = ours.float().reshape(-1, ours.shape[-1]), theirs.float().reshape(-1, theirs.shape[-1])
    for i, (x, y) in enumerate(zip(a, b)):
        allowed = ulps * bf16_step(y.abs().max())
        worst = float((x - y).abs().max())
        assert worst <= allowed, f"position {i}: logits differ by {worst:.4g}, more than {ulps} bf16 steps ({allowed:.4g})"
        assert not argmax or int(x.argmax()) == int(y.argmax()), f"position {i}: another greedy token"


def near_tie(logits: torch.Tensor, seen, penalty: float = 1.0, ulps: int = ULPS) -> bool:
    """Whether the two best of `logits`, after the repetition penalty over the ids `seen`,
    lie within 2 * `ulps` bf16 steps of each other: close enough that two runs, each within
    `ulps` steps of the exact logits, may rightly pick different greedy tokens."""
    x = logits.float().clone()
    if penalty != 1.0 and len(seen):
        idx = torch.tensor(sorted(set(int(t) for t in seen)))
        v = x[idx]
        x[idx] = torch.where(v > 0, v / penalty, v * penalty)
    best = x.topk(2).values
    return float(best[0] - best[1]) <= 2 * ulps * bf16_step(x.abs().max())


def stable_steps(trace, tokens, prompt, penalty: float = 1.0, ulps: int = ULPS) -> int:
    """How many leading greedy steps of a run (its traced logits, its tokens, its prompt ids)
    no rounding can change: the steps before its first near-tie. Random-weight test models
    have near-flat logits, so a near-tie can come at any step; past it a run computed by
    other kernels may rightly take the other token, and what follows is another
    continuation."""
    seen = list(prompt)
    for step, (logits, token) in enumerate(zip(trace, tokens)):
        if near_tie(logits, seen, penalty, ulps):
            return step
        seen.append(token)
    return len(tokens)
