"""Write a synthetic WhatsApp export in which one speaker has a strong, consistent voice.

    python bench/train_synth_export.py OUT.txt --messages 1000 [--seed 0]

"Mara" answers like a pirate captain; "Alex" writes ordinary messages. Sentences are
assembled from pools with slots, so the held-out end of the chat shares the voice but not
the exact lines. Used by the training benchmarks (learning-rate probe, timing of a
1,000-message export); it is not a stand-in for a real person's chat.
"""

from __future__ import annotations

import argparse
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


def reply(rng: random.Random, topic: str) -> str:
    body = rng.choice(BODY).format(t=topic)
    return f"{rng.choice(OPEN)}! {body[0].upper() + body[1:]}, {rng.choice(CLOSE)}."


def write_export(path: Path, messages: int = 1000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    when = datetime(2023, 1, 5, 9, 0)
    lines = []
    n = 0
    while n < messages:
        when += timedelta(hours=rng.choice([8, 12, 20, 30]))  # a new session
        for _ in range(rng.randint(1, 4)):
            topic = rng.choice(TOPICS)
            for who, text in (("Alex", rng.choice(ALEX).format(t=topic)), ("Mara", reply(rng, topic))):
                when += timedelta(minutes=rng.randint(1, 9))
                lines.append(f"{when.month}/{when.day}/{when.year % 100:02d}, {when.hour:02d}:{when.minute:02d} - {who}: {text}")
                n += 1
    Path(path).write_text("\n".join(lines[:messages]) + "\n", encoding="utf-8")
    return Path(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_export(Path(a.out), a.messages, a.seed))
