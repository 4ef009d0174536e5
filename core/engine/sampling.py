"""Per-row token choice for batched decoding: logits processing, seeded sampling, and the
text a row may show so far (stop strings held back until they can no longer match).

Each row applies transformers' own processors (repetition penalty, min new tokens,
temperature, top-k, top-p, in the order `generate` applies them) to its own logits and
its own ids, never the padding, and draws from its own `torch.Generator` seeded with the
row's seed: a row's random stream does not depend on who else is in the batch.
"""

from __future__ import annotations

import math

import torch


class RowSampler:
    """Chooses one row's next token from its (vocab,) fp32 logits."""

    def __init__(self, settings, eos_ids: tuple[int, ...], device="cpu"):
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy = settings.temperature == 0
        self.min_new = settings.min_new_tokens
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
        self.penalty = (
            RepetitionPenaltyLogitsProcessor(settings.repetition_penalty) if settings.repetition_penalty != 1.0 else None
        )
        self.warpers = []
        self.generator = None
        if not self.greedy:
            if settings.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k > 0:
                self.warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(settings.top_p))
            self.generator = torch.Generator(device=device).manual_seed(int(settings.seed))

        # rows whose warpers are the same are warped together (choose)
        self.key = None if self.greedy else (settings.temperature, settings.top_k, settings.top_p)

    def prepare(self, ids: torch.Tensor, scores: torch.Tensor, generated: int) -> torch.Tensor:
        """The row's own processing: repetition penalty over its ids, and end of text held
        off until `min_new_tokens`."""
        if self.penalty is not None:
            scores = self.penalty(ids, scores)
        if self.eos is not None and generated < self.min_new:
            scores[:, self.eos] = -float("inf")
        return scores

    def draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def draw_race(self, tokens: torch.Tensor, probs: torch.Tensor) -> int:
        """One of `tokens` (their probabilities `probs`, (n,)) by an exponential race, as
        `torch.multinomial` draws: the token with the least E / p wins, E exponential. Each
        token's E comes from the step's seed (one number from the row's generator) and the
        token's id alone, so a token that a batch's rounding adds to or drops from the kept
        ones changes the outcome only when it would have won, as over the whole vocabulary,
        without drawing 49,152 random numbers a step."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        e = torch.tensor([-math.log(_uniform(seed, t)) for t in tokens.tolist()], dtype=torch.float64)
        return int(tokens[int(torch.argmin(e / probs.double()))])

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor, generated: int) -> int:
        """`ids`: (1, n) the row's prompt and tokens so far; `scores`: (1, vocab) fp32 logits
        (changed in place); `generated`: tokens this row has produced."""
        return choose([self], [ids], scores, [generated])[0]


def choose(samplers: list[RowSampler], ids: list[torch.Tensor], scores: torch.Tensor, generated: list[int]) -> list[int]:
    """Each row's next token, as its sampler alone would choose it. `scores`: (rows, vocab).

    Rows with the same temperature, top-k and top-p are chosen together. With top-k (on by
    default) only a row's top k tokens can be drawn, so the work after the row's own
    processing runs on those: one `torch.topk` for the rows (a few more than k, for ties),
    the temperature divides those values as transformers' warper divides them all, the
    kept ones are those at least the k-th (`TopKLogitsWarper`'s rule), and top-p and the
    draw run on them. On SmolLM2's 49,152 tokens the warpers over the whole vocabulary
    (a sort, 49,152 exponentials per draw, several full passes) took 21.7 ms a step for 8
    rows. The draw is from the same distribution as over the whole vocabulary (the tokens
    left out have probability 0), by an exponential race whose random numbers are keyed by
    token id (`RowSampler.draw_race`). Every step works row
    by row, so a row's probabilities and its draw from its own generator are those it
    would have alone (tests/test_batching.py and tests/test_sampling.py check them)."""
    out: list[int | None] = [None] * len(samplers)
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, s in enumerate(samplers):
        row = s.prepare(ids[i], scores[i : i + 1], generated[i])
        if s.greedy:
            out[i] = int(row.argmax(-1))
        else:
            groups.setdefault(s.key, []).append((i, row))
    for members in groups.values():
        rows = [i for i, _ in members]
        stacked = torch.cat([row for _, row in members])
        warpers = samplers[rows[0]].warpers
        temperature, top_k_warper = _warpers()
        top_k = next((w for w in warpers if isinstance(w, top_k_warper)), None)
        if top_k is None or not all(isinstance(w, temperature) for w in warpers[: warpers.index(top_k)]):
            _choose_whole(samplers, rows, stacked, warpers, out)
        else:
            _choose_top_k(samplers, rows, stacked, warpers, top_k, out)
    return out


_TIES = 8  # values beyond the k-th that topk returns, to keep ties with it as the warper does


def _choose_top_k(samplers, rows, stacked, warpers, top_k, out) -> None:
    temperature, _ = _warpers()
    k = min(top_k.top_k, stacked.shape[-1])
    window = min(stacked.shape[-1], k + _TIES)
    values, index = torch.topk(stacked, window, dim=-1)  # descending
    for w in warpers:
        if isinstance(w, temperature):
            values = w(None, values)  # the same division, on the values that can be kept
    after = warpers[warpers.index(top_k) + 1 :]
    kth = values[:, k - 1 : k]
    for j, i in enumerate(rows):
        keep = values[j] >= kth[j]
        if bool(keep[-1]) and window < stacked.shape[-1]:  # ties run past the window: all of them
            _choose_whole(samplers, [i], stacked[j : j + 1], warpers, out)
            continue
        kept, sub = index[j][keep], values[j][keep].view(1, -1)
        for w in after:
            sub = w(None, sub)
        out[i] = samplers[i].draw_race(kept, torch.softmax(sub, dim=-1)[0])


def _choose_whole(samplers, rows, stacked, warpers, out) -> None:
    """transformers' warpers over the whole vocabulary, then the draw."""
    for warp in warpers:
        stacked = warp(None, stacked)  # transformers' warpers do not read the ids
    probs = torch.softmax(stacked, dim=-1)
    for j, i in enumerate(rows):
        out[i] = samplers[i].draw(probs[j : j + 1])


_MASK = (1 << 64) - 1


def _uniform(seed: int, token: int) -> float:
    """A number in (0, 1) from (seed, token): splitmix64's finaliser over both (Steele,
    Lea and Flood 2014), exact in Python integers."""
    z = (seed + (token + 1) * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return ((z >> 11) + 0.5) / 2.0**53


def _warpers():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    return TemperatureLogitsWarper, TopKLogitsWarper


class TextGate:
    """The reply's text as tokens arrive: what may be shown now, and whether a stop string
    ended it. A tail that could still become a stop string (or an incomplete UTF-8
    character) is held back, so the text shown never contains a stop string, even one
    that spans tokens."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.tokens: list[int] = []  # tokens since the last line break that was shown
        self.done = ""  # the text of the tokens before them
        self.shown = 0  # characters of the text already handed out
        self.text = ""
        self.hit = False  # a stop string appeared: the text ends before it

    def add(self, token: int) -> str:
        """Take one token; return the new text that may be shown now."""
        self.tokens.append(token)
        text = self.done + self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        # Only a stop string that ends in the new text can be new: search from just before it.
        found = [text.find(s, max(0, self.shown - len(s) + 1)) for s in self.stops]
        cut = min((i for i in found if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self.text = text[:cut]
            return self._take(len(self.text))
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):
            return ""  # a character split across tokens: wait for the rest
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        piece = self._take(safe)
        if text.endswith("\n") and self.shown == len(text):
            # Decoding every token again at each step costs O(n) a step; after a shown line
            # break the next tokens decode on their own (as transformers' streamers do).
            self.done, self.tokens = text, []
        return piece

    def flush(self) -> str:
        """The row ended: everything held back goes now (an unfinished character as the
        tokenizer decodes it, as transformers' streamers do)."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        piece = self.text[self.shown : upto]
        self.shown = upto
        return piece
