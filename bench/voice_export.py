"""Write synthetic WhatsApp group chats for the voice-match measure (bench/voice.py, tests).

    python bench/voice_export.py OUT.txt --style strong|close [--messages 1200] [--seed 0]

Mara talks in a group with Alex, Sam and Jo (the measure needs at least two other
speakers). `strong`: Mara answers like a pirate captain (bench/train_synth_export.py's
voice); `close`: she writes like the others, with small habits of her own (lower-case
starts, no final full stop, "tbh", "kinda"), the hard case where a classifier can barely
tell her apart. Others ask with train_synth_export's Alex lines and answer plainly, as often as Mara.
Sentences come from pools with slots, so the held-out end shares the voice, not the lines.
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_synth_export import ALEX, TOPICS, reply  # noqa: E402

OTHERS = ("Alex", "Sam", "Jo")
PLAIN = [
    "Yeah, {t} was fine.", "Not sure about {t}, honestly.", "I think {t} will be ok.", "Same here, {t} was a lot.",
    "Let's sort out {t} tomorrow.", "Oh no, {t} again?", "Sounds good, let's talk about {t} later.",
    "I heard {t} went well.", "Can't wait for {t}!", "Haha, {t} is always like that.", "Good luck with {t}.",
    "Did anyone else see {t}?", "Honestly {t} could be worse.", "Keep me posted on {t}.",
]
STYLES = ("strong", "close")


def close_reply(rng: random.Random, topic: str) -> str:
    """Like the others' lines, with Mara's small habits."""
    text = rng.choice(PLAIN).format(t=topic)
    if rng.random() < 0.5:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.5:
        text = text.rstrip(".")
    if rng.random() < 0.25:
        text += " tbh"
    if rng.random() < 0.2:
        text = text.replace("was", "was kinda", 1)
    return text


def plain(rng: random.Random, topic: str) -> str:
    """An ordinary comment; now and then typed in a hurry (lower-case start)."""
    text = rng.choice(PLAIN).format(t=topic)
    return text[0].lower() + text[1:] if rng.random() < 0.2 else text


def write_group_export(path: Path, *, style: str = "strong", messages: int = 1200, seed: int = 0) -> Path:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}")
    rng = random.Random(seed)
    mara = reply if style == "strong" else close_reply
    when = datetime(2023, 1, 5, 9, 0)
    lines: list[str] = []

    def say(who: str, text: str) -> None:
        nonlocal when
        when += timedelta(minutes=rng.randint(1, 9))
        lines.append(f"{when.month}/{when.day}/{when.year % 100:02d}, {when.hour:02d}:{when.minute:02d} - {who}: {text}")

    while len(lines) < messages:
        when += timedelta(hours=rng.choice([8, 12, 20, 30]))  # a new session
        for _ in range(rng.randint(1, 4)):
            topic = rng.choice(TOPICS)
            asker = rng.choice(OTHERS)
            say(asker, rng.choice(ALEX).format(t=topic))
            # Mara and one or two of the others answer, in a random order: the others
            # answer as often as she does, so "who answers" does not give her away.
            answers = [("Mara", mara(rng, topic))]
            answers += [(o, plain(rng, topic)) for o in rng.sample([o for o in OTHERS if o != asker], rng.randint(1, 2))]
            rng.shuffle(answers)
            for who, text in answers:
                say(who, text)
    Path(path).write_text("\n".join(lines[:messages]) + "\n", encoding="utf-8")
    return Path(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--style", choices=STYLES, default="strong")
    ap.add_argument("--messages", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_group_export(Path(a.out), style=a.style, messages=a.messages, seed=a.seed))
