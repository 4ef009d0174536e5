"""Voice match: does what the trained persona writes sound like the person?

Perplexity says the adapter predicts the speaker's words; it does not say whether the
replies it writes sound like them. This measure asks an authorship classifier
(voice_features.VoiceJudge), fitted on the TRAINING split only (the speaker's turns
against everyone else's), whom K replies sound like:

- the speaker's real held-out replies: the ceiling (how well the classifier can tell at all);
- replies of the base model + persona card to the same held-out contexts: the floor;
- replies of the adapter, same contexts, same seed and settings: somewhere between.

Voice match = the share of replies attributed to the speaker, with a 95% Wilson interval
(K is small: about 24). Too little data gives `judged=False` and a reason instead of numbers.

The training worker wires it in (worker.py, stage "measuring the voice match"); the
replies come from a callable so that it samples with its own trap-safe model
(evaluate.sample_replies, batched):

    result = measure_voice(examples, partial(sample_replies, model, tokenizer, persona,
                                             seed=cfg.seed, max_new_tokens=cfg.sample_max_new_tokens))
    evaluation["voice"] = result.as_dict()
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

from core.chatimport.examples import ExampleSet, normalize_name
from core.training.evaluate import sample_prompts
from core.training.voice_features import VoiceJudge, moved_features

DEFAULT_K = 24
NOT_ENOUGH = "not enough data to judge the voice"
# Below these the figure would be noise dressed as a number:
# - MIN_OTHER_SPEAKERS: with one other person the classifier learns what separates two
#   people (often just who asks and who answers), so any reply lands on one side or the
#   other by accident; two or more others make "everyone else" a real contrast.
# - MIN_TURNS per class (training split): a character n-gram model fitted on a few dozen
#   turns learns their topics, not a style.
# - MIN_K held-out contexts: below 10 the 95% interval of a share is wider than +-0.3
#   wherever it lands, so floor, adapter and ceiling could not be told apart.
MIN_OTHER_SPEAKERS = 2
MIN_OTHER_MESSAGES = 5  # someone with fewer text messages in the export is not counted as a speaker
MIN_TURNS = 40
MIN_K = 10
MAX_TURNS_PER_CLASS = 4000  # bigger exports: an even spread of this many keeps the fit to seconds
CAVEAT = (
    "Each share comes from only {k} replies, so its 95% interval is wide: a difference "
    "inside the overlap of two intervals may be chance."
)

# A generate callable: (held-out prompts [{"turns", "real"}...]) -> rows
# [{"prompt", "real", "base", "adapter"}...], as evaluate.sample_replies returns them.
Replies = Callable[[list[dict]], list[dict]]


@dataclass
class VoiceData:
    """What the classifier is fitted on: turns of the training split, and who wrote them."""

    target: list[str]
    others: list[str]
    other_speakers: int

    def shortfall(self, k: int) -> str | None:
        """Why this cannot be judged (None if it can), for `k` usable held-out contexts."""
        if self.other_speakers < MIN_OTHER_SPEAKERS:
            return f"{NOT_ENOUGH}: the chat has {self.other_speakers} other speaker(s); telling a voice apart needs at least {MIN_OTHER_SPEAKERS}"
        if len(self.target) < MIN_TURNS or len(self.others) < MIN_TURNS:
            return f"{NOT_ENOUGH}: the training part has {len(self.target)} of the speaker's turns and {len(self.others)} of others'; at least {MIN_TURNS} of each are needed"
        if k < MIN_K:
            return f"{NOT_ENOUGH}: only {k} held-out replies to score; at least {MIN_K} are needed"
        return None


def _spread(items: list, n: int) -> list:
    """`n` items evenly spread over `items` (all of them if there are fewer), in order."""
    if len(items) <= n:
        return list(items)
    return [items[(2 * i + 1) * len(items) // (2 * n)] for i in range(n)]


def _split_group_turn(text: str, names: list[str]) -> list[str]:
    """A user turn of a group chat ("Bob: hi\\nmore\\nCarol: hey") cut into its speakers'
    parts without the name prefixes. A 1:1 chat's turn has no prefixes and stays whole."""
    if not names:
        return [text]
    head = re.compile("^(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + "): ")
    parts: list[list[str]] = []
    for line in text.split("\n"):
        m = head.match(line)
        if m or not parts:
            parts.append([line[m.end():] if m else line])
        else:
            parts[-1].append(line)
    return [p for p in ("\n".join(x).strip() for x in parts) if p]


def speaker_turns(examples: list[dict], report: dict) -> tuple[list[str], list[str]]:
    """(the speaker's turns, everyone else's turns without name prefixes) of `examples`;
    `report` is the ExampleSet's (it names the speaker and who else wrote)."""
    target = normalize_name(report.get("speaker", ""))
    others = [n for n in report.get("messages_per_speaker", {}) if normalize_name(n) != target]
    mine, theirs = [], []
    for ex in examples:
        for m in ex["messages"]:
            if m["role"] == "assistant":
                mine.append(m["content"])
            else:
                theirs.extend(_split_group_turn(m["content"], others))
    return mine, theirs


def voice_data(examples: ExampleSet) -> VoiceData:
    """The speaker's and the others' turns of the training split; the held-out split is
    never read (it is what gets scored)."""
    report = examples.report
    mine, theirs = speaker_turns(examples.train, report)
    target = normalize_name(report.get("speaker", ""))
    counts = report.get("messages_per_speaker", {})
    return VoiceData(
        target=_spread(mine, MAX_TURNS_PER_CLASS),
        others=_spread(theirs, MAX_TURNS_PER_CLASS),
        other_speakers=sum(1 for n, c in counts.items() if normalize_name(n) != target and c >= MIN_OTHER_MESSAGES),
    )


def voice_prompts(validation: list[dict], k: int = DEFAULT_K) -> list[dict]:
    """Up to `k` held-out contexts spread evenly over the held-out split (oldest to newest),
    each {"turns": the context, "real": the speaker's reply}; fewer on small exports."""
    return sample_prompts(_spread(validation, k), k)


def replies_from(generate: Callable[[list[dict], bool, int], str], *, seed: int) -> Replies:
    """A `Replies` from an engine-like `generate(turns, adapter_on, seed) -> text`: for each
    prompt, one base + card and one adapter reply with the same seed (seed + prompt index;
    one prompt at a time, unlike the batched evaluate.sample_replies of a training run)."""

    def run(prompts: list[dict]) -> list[dict]:
        rows = []
        for i, p in enumerate(prompts):
            row = {"prompt": p["turns"][-1]["content"], "real": p["real"]}
            for label, on in (("base", False), ("adapter", True)):
                row[label] = generate(p["turns"], on, seed + i).strip()
            rows.append(row)
        return rows

    return run


@dataclass
class Share:
    """How many of k replies were attributed to the speaker, with a 95% Wilson interval."""

    hits: int
    k: int

    @property
    def value(self) -> float:
        return self.hits / self.k

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.k)


def wilson(hits: int, k: int) -> tuple[float, float]:
    """The 95% Wilson score interval of hits/k (sound near 0 and 1, unlike the normal one)."""
    from scipy.stats import binomtest

    ci = binomtest(hits, k).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


@dataclass
class VoiceResult:
    """The voice-match figures of one run, or why there are none."""

    judged: bool
    reason: str | None = None
    real: Share | None = None
    base: Share | None = None
    adapter: Share | None = None
    features: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # turns and speakers the classifier was fitted on
    seconds: dict = field(default_factory=dict)  # {"replies": generation, "measure": fit and scoring}
    # The scored rows {"prompt", "real", "base", "adapter"}: the run's sample replies and
    # the pairs for a blind "which sounds like them?" comparison.
    rows: list[dict] = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.real.k if self.real else 0

    @property
    def gap_closed(self) -> float | None:
        """(adapter - base) / (real - base): 1 = as attributable as the real replies, 0 = no
        better than the base. None when the ceiling is not above the floor (nothing to close)."""
        if not self.judged or self.real.value - self.base.value < 1 / self.k:
            return None
        return (self.adapter.value - self.base.value) / (self.real.value - self.base.value)

    def summary(self) -> str:
        """One plain sentence for the CLI and the Train tab."""
        if not self.judged:
            return f"Voice match: {self.reason}."

        def pct(share: Share) -> str:
            lo, hi = share.interval
            return f"{share.value:.0%} ({lo:.0%}-{hi:.0%})"

        text = (
            f"Voice match (share of {self.k} held-out replies a classifier attributes to the speaker, 95% range): "
            f"adapter {pct(self.adapter)}, base + card {pct(self.base)}, the real replies {pct(self.real)}."
        )
        gap = self.gap_closed
        if gap is None:
            return text + " The classifier cannot tell the real replies from the base model's here, so this says little."
        return text + f" The adapter covers {gap:.0%} of the way from the base to the real replies; K is small, so treat it as a rough figure."

    def as_dict(self) -> dict:
        out: dict = {"judged": self.judged, "reason": self.reason, "k": self.k}
        for name in ("real", "base", "adapter"):
            share = getattr(self, name)
            out[f"voice_match_{name}"] = round(share.value, 3) if share else None
            out[f"voice_match_{name}_ci"] = [round(x, 3) for x in share.interval] if share else None
        gap = self.gap_closed
        out["gap_closed"] = round(gap, 3) if gap is not None else None
        out["features"] = self.features
        out["caveat"] = CAVEAT.format(k=self.k) if self.judged else None
        out["summary"] = self.summary()
        out["data"] = self.data
        out["seconds"] = self.seconds
        out["replies"] = self.rows
        return out


def score_voice(judge: VoiceJudge, rows: list[dict]) -> VoiceResult:
    """Voice match of the real, base and adapter replies in `rows`."""
    texts = {name: [r[name] for r in rows] for name in ("real", "base", "adapter")}
    shares = {name: Share(sum(judge.attribute(t)), len(t)) for name, t in texts.items()}
    features = moved_features(texts["real"], texts["base"], texts["adapter"], judge.distinctive)
    return VoiceResult(judged=True, features=features, rows=list(rows), **shares)


def measure_voice(examples: ExampleSet, replies: Replies, *, k: int = DEFAULT_K) -> VoiceResult:
    """The whole measure for one run: check the data, fit on the training split, have
    `replies` answer up to `k` held-out contexts, score. Nothing is generated when the
    export is too small to judge."""
    t0 = time.perf_counter()
    data = voice_data(examples)
    prompts = voice_prompts(examples.validation, k)
    counts = {"target_turns": len(data.target), "other_turns": len(data.others), "other_speakers": data.other_speakers}
    why = data.shortfall(len(prompts))
    if why:
        return VoiceResult(judged=False, reason=why, data=counts)
    judge = VoiceJudge.fit(data.target, data.others)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = replies(prompts)
    gen_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = score_voice(judge, rows)
    result.data = counts
    result.seconds = {"replies": round(gen_s, 2), "measure": round(fit_s + time.perf_counter() - t2, 2)}
    return result
