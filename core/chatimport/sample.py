"""`inspect FILE --sample SPEAKER [N]`: what a persona would learn from a speaker, before training.

The sample is taken from the examples `build_examples` would train on (the speaker's
turns, consecutive messages merged), spread evenly over the chat from first to last,
so a placeholder or a system line that slipped into "text" shows up here.
"""

from __future__ import annotations

from .examples import build_examples
from .model import ImportResult

DEFAULT_N = 5


def sample_turns(result: ImportResult, speaker: str, n: int = DEFAULT_N) -> dict:
    """{"speaker", "turns" (how many would be trained), "samples": [text, ...]}: n turns, evenly spread."""
    examples = build_examples(result, speaker, val_fraction=0.0)
    turns = []
    for ex in examples.train + examples.validation:
        for m in ex["messages"]:
            if m["role"] == "assistant":
                turns.append(m["content"])
    n = max(0, min(n, len(turns)))
    picks = [turns[round(i * (len(turns) - 1) / (n - 1))] for i in range(n)] if n > 1 else turns[:n]
    return {"speaker": examples.report["speaker"], "turns": len(turns), "samples": picks}


def render_sample(sample: dict) -> str:
    lines = [f"{len(sample['samples'])} of the {sample['turns']:,} turns that would be trained for {sample['speaker']}:"]
    for i, s in enumerate(sample["samples"], 1):
        lines.append(f"--- {i}")
        lines.append(s)
    return "\n".join(lines)
