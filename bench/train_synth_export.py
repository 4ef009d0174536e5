"""Write a synthetic WhatsApp export in which one speaker has a strong, consistent voice.

    python bench/train_synth_export.py OUT.txt --messages 1000 [--seed 0]
    python bench/train_synth_export.py OUT.json --sharegpt --messages 480

"Mara" answers like a pirate captain; "Alex" writes ordinary messages. Sentences are
assembled from pools with slots, and no reply is written twice, so the held-out end of the
chat shares the voice but never an exact line (the held-out loss measures the voice, not
memory). Used by the training benchmarks (learning-rate probe, timing of a 1,000-message
export) and, in ShareGPT form ("human" asks, "gpt" answers like Mara), as the training
tests' fixture; it is not a stand-in for a real person's chat.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

TOPICS = ["work", "the weekend", "dinner", "the weather", "my sister", "the new flat", "the car", "the game last night",
          "the trip", "my exam", "the dog", "the party", "the garden", "the meeting", "my bike", "the concert"]
ALEX = [
    "hey, how was {t}?", "did you hear about {t}?", "I'm so tired of {t}", "what do you think about {t}?",
    "can we talk about {t} later?", "guess what happened with {t}", "ugh, {t} again", "any plans for {t}?",
    "I need advice on {t}", "{t} was weird today", "are you free to help with {t}?", "lol {t} is a mess",
]
OPEN = ["Arr", "Ahoy", "Blimey", "Shiver me timbers", "Avast", "Yo ho", "Arrr, matey", "Har har"]
BODY = [
    "{t}? That be a storm worth sailin' through", "ye'll weather {t} like a true buccaneer",
    "{t} be naught but a squall on the horizon", "I'd sooner walk the plank than fret over {t}",
    "hoist the sails and face {t} head on", "{t} smells of bilge water, if ye ask me",
    "there be treasure hidden in {t}, mark me words", "{t} be as slippery as an eel in a barrel",
    "even Davy Jones would grumble about {t}", "chart a course round {t} and keep yer powder dry",
]
CLOSE = ["matey", "ye scallywag", "me hearty", "savvy?", "by the seven seas", "or I'm a landlubber", "yo ho ho", "lad"]


def reply(rng: random.Random, topic: str, used: set[str] | None = None) -> str:
    """A pirate reply about `topic`; with `used`, one not in it (and added to it)."""
    for _ in range(1000):
        body = rng.choice(BODY).format(t=topic)
        text = f"{rng.choice(OPEN)}! {body[0].upper() + body[1:]}, {rng.choice(CLOSE)}."
        if used is None or text not in used:
            break
    else:  # 640 distinct replies per topic: only a very long export gets here
        raise ValueError("ran out of distinct replies; use fewer messages")
    if used is not None:
        used.add(text)
    return text


def _sessions(rng: random.Random, messages: int):
    """(time, speaker, text) lists, one per session, `messages` messages in all; Mara never repeats a reply."""
    when, n, used = datetime(2023, 1, 5, 9, 0), 0, set()
    while n < messages:
        when += timedelta(hours=rng.choice([8, 12, 20, 30]))  # a new session
        session = []
        for _ in range(rng.randint(1, 4)):
            topic = rng.choice(TOPICS)
            for who, text in (("Alex", rng.choice(ALEX).format(t=topic)), ("Mara", reply(rng, topic, used))):
                when += timedelta(minutes=rng.randint(1, 9))
                if n < messages:
                    session.append((when, who, text))
                    n += 1
        yield session


def write_export(path: Path, messages: int = 1000, seed: int = 0) -> Path:
    """A WhatsApp text export (Android style) of `messages` messages between Alex and Mara."""
    lines = [
        f"{when.month}/{when.day}/{when.year % 100:02d}, {when.hour:02d}:{when.minute:02d} - {who}: {text}"
        for session in _sessions(random.Random(seed), messages)
        for when, who, text in session
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def write_sharegpt(path: Path, messages: int = 480, seed: int = 0) -> Path:
    """The same chat as ShareGPT JSON: one conversation per session, "human" is Alex, "gpt" is Mara."""
    names = {"Alex": "human", "Mara": "gpt"}
    convs = [
        {"id": f"synthetic-{k}", "conversations": [{"from": names[who], "value": text} for _, who, text in session]}
        for k, session in enumerate(_sessions(random.Random(seed), messages))
    ]
    Path(path).write_text(json.dumps(convs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sharegpt", action="store_true", help="ShareGPT JSON instead of a WhatsApp export")
    a = ap.parse_args()
    print((write_sharegpt if a.sharegpt else write_export)(Path(a.out), a.messages, a.seed))
