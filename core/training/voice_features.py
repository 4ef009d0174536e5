"""The authorship classifier behind the voice-match measure, and what it looks at.

Stylometry's standard test: a classifier that knows a person's writing tells their
messages from other people's. `VoiceJudge.fit` learns, from turns of the training split
only, the target speaker (class 1) against everyone else (class 0):

- character n-grams (TF-IDF, `char_wb`, 2-4 characters, lower-cased): spelling, slang,
  favourite words and their fragments, emoji;
- the speaker's common words (whether a reply uses each of their most frequent words);
- a few style numbers (`STYLE`): length, emoji, punctuation, casing, lines.

A logistic regression with balanced class weights (others usually outnumber the speaker)
turns them into P(target); a reply is attributed to the speaker when it is above 1/2.
Everything is deterministic: no sampling, lbfgs, a fixed random_state.

`moved_features` explains a result in words: which of these (words, style numbers) moved
most from the base replies towards the real ones in the adapter's replies.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

WORD = re.compile(r"[^\W\d_][\w']*", re.UNICODE)  # a word: starts with a letter, may hold ' (ye'll, matey's)
COMMON_WORDS = 40  # the speaker's most frequent words the classifier sees as "uses it or not"
RANDOM_STATE = 0


def _is_emoji(ch: str) -> bool:
    # Pictographs, dingbats and symbols ("So") cover emoji and the older ☺ ♥ ✓ family.
    return unicodedata.category(ch) == "So" or 0x1F000 <= ord(ch) <= 0x1FAFF


# Style numbers of one text: (name, how a person reads it, function). Rates are per
# character or per letter so that a long reply does not count as "more punctuated".
STYLE = (
    ("length", "characters", lambda t: len(t)),
    ("words", "words", lambda t: len(t.split())),
    ("emoji", "emoji", lambda t: sum(map(_is_emoji, t))),
    ("exclamation", "exclamation marks", lambda t: t.count("!")),
    ("question", "question marks", lambda t: t.count("?")),
    ("comma", "commas", lambda t: t.count(",")),
    ("ellipsis", "'...'", lambda t: t.count("...") + t.count("\u2026")),
    ("apostrophe", "apostrophes", lambda t: t.count("'") + t.count("\u2019")),
    ("capitals", "share of capital letters", lambda t: _share(sum(c.isupper() for c in t), sum(c.isalpha() for c in t))),
    ("capital_start", "replies starting with a capital", lambda t: float(t[:1].isupper())),
    ("end_punct", "replies ending with . ! or ?", lambda t: float(t.rstrip()[-1:] in (".", "!", "?"))),
    ("lines", "lines", lambda t: t.count("\n") + 1 if t else 0),
)


def _share(a: float, b: float) -> float:
    return a / b if b else 0.0


def style_row(text: str) -> list[float]:
    """The raw style numbers of one text, in STYLE's order."""
    return [float(f(text)) for _, _, f in STYLE]


def _style_matrix(texts) -> np.ndarray:
    rows = []
    for t in texts:
        raw = style_row(t)
        n = max(len(t), 1)
        # Counts become rates per character (length and words on a log scale), so the
        # classifier learns "punctuates a lot", not "writes long messages" twice over.
        rows.append([np.log1p(raw[0]), np.log1p(raw[1]), *(v / n for v in raw[2:8]), *raw[8:11], np.log1p(raw[11])])
    return np.asarray(rows, dtype=float)


def words(text: str) -> list[str]:
    return [w.casefold() for w in WORD.findall(text)]


class SpeakerWords(BaseEstimator, TransformerMixin):
    """Whether a text uses each of the target speaker's COMMON_WORDS most frequent words."""

    def __init__(self, top: int = COMMON_WORDS):
        self.top = top

    def fit(self, texts, y):
        counts = Counter(w for t, label in zip(texts, y) if label == 1 for w in words(t))
        vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top]]
        self.vectorizer_ = CountVectorizer(vocabulary=vocab or ["\0"], binary=True, analyzer=words)
        return self

    def transform(self, texts):
        return self.vectorizer_.transform(texts)


class VoiceJudge:
    """A fitted authorship classifier: `attribute(texts)` says which ones sound like the speaker."""

    def __init__(self, pipeline, distinctive: dict[str, float]):
        self.pipeline = pipeline
        self.distinctive = distinctive  # word -> how many times likelier in the speaker's turns

    @classmethod
    def fit(cls, target: list[str], others: list[str]) -> "VoiceJudge":
        texts = list(target) + list(others)
        y = np.array([1] * len(target) + [0] * len(others))
        features = FeatureUnion(
            [
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True, max_features=50_000)),
                ("words", SpeakerWords()),
                ("style", make_pipeline(FunctionTransformer(_style_matrix), StandardScaler())),
            ],
            # The n-gram block is one unit-length vector per text; the other two have one
            # unit-scale column per feature. These weights keep n-grams the main signal and
            # the style numbers a nudge, so 12 style columns cannot outvote thousands of n-grams.
            transformer_weights={"chars": 1.0, "words": 0.3, "style": 0.3},
        )
        clf = LogisticRegression(class_weight="balanced", C=4.0, max_iter=2000, random_state=RANDOM_STATE)
        pipeline = make_pipeline(features, clf)
        pipeline.fit(texts, y)
        return cls(pipeline, distinctive_words(target, others))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """P(the target speaker wrote it), one per text."""
        if not texts:
            return np.zeros(0)
        return self.pipeline.predict_proba(list(texts))[:, 1]

    def attribute(self, texts: list[str]) -> list[bool]:
        """True for each text the classifier gives to the speaker; an empty reply never is."""
        p = self.probabilities(texts)
        return [bool(t.strip()) and bool(q > 0.5) for t, q in zip(texts, p)]

    def fingerprint(self) -> np.ndarray:
        """The fitted coefficients (what a test compares to prove what the fit saw)."""
        clf = self.pipeline[-1]
        return np.concatenate([clf.coef_.ravel(), clf.intercept_])


def distinctive_words(target: list[str], others: list[str], *, ratio: float = 2.0, min_turns: int = 5) -> dict[str, float]:
    """Words whose share of turns differs at least `ratio`-fold between the speaker and the
    others (add-one smoothed; seen in at least `min_turns` turns): the words worth naming
    when a reply moves towards the speaker. "the" is common, not distinctive."""
    t_uses, o_uses = Counter(), Counter()
    for texts, uses in ((target, t_uses), (others, o_uses)):
        for t in texts:
            uses.update(set(words(t)))
    out = {}
    for w in set(t_uses) | set(o_uses):
        if t_uses[w] + o_uses[w] < min_turns:
            continue
        r = ((t_uses[w] + 1) / (len(target) + 2)) / ((o_uses[w] + 1) / (len(others) + 2))
        if r >= ratio or r <= 1 / ratio:
            out[w] = round(r, 3)
    return out


def _uses(texts: list[str]) -> list[set[str]]:
    return [set(words(t)) for t in texts]


def moved_features(
    real: list[str], base: list[str], adapter: list[str], distinctive: dict[str, float] | None = None, *, top_words: int = 3, top_style: int = 2
) -> list[dict]:
    """What moved most from the base replies towards the real ones in the adapter's replies.

    Words: the share of replies that use the word. Style: the mean per reply. A feature
    counts only if the adapter moved towards the real replies and closed a real part of
    the gap (at least two replies' worth for a word, a quarter of the gap for a style
    number). Only `distinctive` words are named when given (see distinctive_words).
    Each entry has the three values and a sentence.
    """
    k = len(real)
    if not (real and base and adapter):
        return []
    out = []
    r_uses, b_uses, a_uses = _uses(real), _uses(base), _uses(adapter)
    vocab = sorted(set().union(*r_uses, *b_uses, *a_uses))
    cands = []
    for w in vocab:
        if len(w) < 2 or (distinctive is not None and w not in distinctive):
            continue
        r, b, a = (sum(w in u for u in uses) for uses in (r_uses, b_uses, a_uses))
        moved = abs(b / len(base) - r / k) - abs(a / len(adapter) - r / k)
        if (a - b) * (r - b) > 0 and abs(a - b) >= 2 and moved > 0:  # closer to the real replies, not past them
            cands.append((moved, w, r, b, a))
    cands.sort(key=lambda c: (-c[0], c[1]))
    for moved, w, r, b, a in cands[:top_words]:
        if a > b:
            how = f"{a / b:.1f}x more often than the base model" if b else "where the base model never did"
            text = f"uses '{w}' {how} ({a} of {len(adapter)} replies against {b}), like the real messages ({r} of {k})"
        else:
            text = f"uses '{w}' less than the base model ({a} of {len(adapter)} replies against {b}), like the real messages ({r} of {k})"
        out.append({"feature": f"word '{w}'", "real": r / k, "base": b / len(base), "adapter": a / len(adapter), "text": text})

    means = [np.mean([style_row(t) for t in texts], axis=0) for texts in (real, base, adapter)]
    style = []
    for i, (name, label, _) in enumerate(STYLE):
        if name == "words":  # says the same as length
            continue
        r, b, a = (float(m[i]) for m in means)
        gap = b - r
        if abs(gap) < 1e-9 or (a - b) * (r - b) <= 0:
            continue
        closed = (b - a) / gap  # 1: the adapter matches the real replies; 0: no better than the base
        # A quarter of the gap at least, and no overshoot beyond the real replies worse than the base was.
        if abs(a - r) <= 0.75 * abs(gap) and abs(gap) >= 0.1 * max(abs(r), abs(b), 1e-9):
            style.append((closed * abs(gap) / max(abs(r), abs(b)), name, label, r, b, a, closed))
    style.sort(key=lambda s: (-s[0], s[1]))
    for _, name, label, r, b, a, closed in style[:top_style]:
        if name == "length":
            text = f"{'longer' if a > b else 'shorter'} replies: {a:.0f} characters on average against {b:.0f} for the base model, like the real messages ({r:.0f})"
        elif label.startswith(("share", "replies")):
            text = f"{label}: {a:.0%} against {b:.0%} for the base model, like the real messages ({r:.0%})"
        else:
            text = f"{'more' if a > b else 'fewer'} {label} per reply: {a:.1f} against {b:.1f} for the base model, like the real messages ({r:.1f})"
        out.append({"feature": name, "real": round(r, 3), "base": round(b, 3), "adapter": round(a, 3), "text": text})
    for item in out:
        for key in ("real", "base", "adapter"):
            item[key] = round(item[key], 3)
    return out
