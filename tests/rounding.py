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


def assert_within_bf16_rounding(ours: torch.Tensor, theirs: torch.Tensor, ulps: int = ULPS) -> None:
    """`ours` and `theirs` are (..., vocab) logits: each position within `ulps` bf16 steps
    of the other at its largest logit, and the same greedy (argmax) token."""
    assert ours.shape == theirs.shape
    a, b = ours.float().reshape(-1, ours.shape[-1]), theirs.float().reshape(-1, theirs.shape[-1])
    for i, (x, y) in enumerate(zip(a, b)):
        allowed = ulps * bf16_step(y.abs().max())
        worst = float((x - y).abs().max())
        assert worst <= allowed, f"position {i}: logits differ by {worst:.4g}, more than {ulps} bf16 steps ({allowed:.4g})"
        assert int(x.argmax()) == int(y.argmax()), f"position {i}: another greedy token"
