"""Voice-match benchmark: the measure of core/training/voice.py on two synthetic group chats.

    python bench/voice.py [--messages 2400] [--k 24] [--seed 0]
    python bench/voice.py --adapter ADAPTER_DIR --export CHAT.txt [--model PATH] [--speaker Mara]

Without --adapter it writes the two exports of bench/voice_export.py (a speaker with a
strong style, one whose style is close to the others') and scores, for K held-out
contexts, the real replies against stand-ins: "base" = other speakers' held-out turns,
"adapter" = half the speaker's own held-out turns from other contexts, half others'. That
checks the measure's ceiling and floor and times it without any model.

With --adapter (a folder that Chorus training wrote, trained on CHAT.txt) it loads the
base model through core.engine and generates one base + card and one adapter reply per
held-out context, same seed and settings as the training run's samples, then scores
them; `train_seconds` comes from the adapter's training_config.json, so the output says
how much time the measure adds to that run.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.voice_export import STYLES, write_group_export  # noqa: E402
from core.chatimport import build_examples, load_export  # noqa: E402
from core.training.config import TrainConfig  # noqa: E402
from core.training.voice import measure_voice, replies_from, speaker_turns  # noqa: E402


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _examples(path: Path, speaker: str):
    cfg = TrainConfig()  # the same split a training run makes
    return build_examples(load_export(path), speaker, scrub=cfg.scrub, max_turns=cfg.max_turns, val_fraction=cfg.val_fraction)


def stand_in_replies(examples, seed: int):
    """Rows whose "base" and "adapter" are real chat turns standing in for generated replies."""
    rng = random.Random(seed)
    mine, theirs = speaker_turns(examples.validation, examples.report)
    rng.shuffle(theirs)
    rng.shuffle(mine)

    def replies(prompts: list[dict]) -> list[dict]:
        rows = []
        for i, p in enumerate(prompts):
            own = [t for t in mine if t != p["real"]] or mine
            adapter = own[i % len(own)] if i % 2 == 0 else theirs[(i + len(prompts)) % len(theirs)]
            rows.append({"prompt": p["turns"][-1]["content"], "real": p["real"], "base": theirs[i % len(theirs)], "adapter": adapter})
        return rows

    return replies


def engine_replies(adapter_dir: Path, model: str | None, seed: int, max_new_tokens: int):
    """A generate callable over core.engine: base + card or adapter, the run's sample settings."""
    from core.engine import AdapterRef, Engine, GenerationSettings
    from core.logs import quiet_libraries
    from core.model_source import resolve_model
    from core.prompting import build_prompt
    from storage.store import Store

    quiet_libraries()
    run = json.loads((adapter_dir / "training_config.json").read_text(encoding="utf-8"))
    persona = {"name": run["persona"]["name"], "system_prompt": run["system_prompt"]}  # the card it was trained with
    home = Path(tempfile.mkdtemp(prefix="voice-bench-"))
    _say("loading the model")
    engine = Engine.load(resolve_model(model, Store(home).home, lambda *a: None))
    ref = AdapterRef("voice-bench", adapter_dir)

    def generate(turns: list[dict], adapter_on: bool, s: int) -> str:
        prompt = build_prompt(engine.tokenizer, persona, turns, engine.prompt_budget(max_new_tokens))
        settings = GenerationSettings(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.1, max_new_tokens=max_new_tokens, seed=s)
        return engine.generate(prompt.input_ids, ref if adapter_on else None, settings)

    return replies_from(generate, seed=seed), run.get("result", {}).get("train_seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2400, help="messages per generated export (2400 gives about 30 held-out contexts)")
    ap.add_argument("--k", type=int, default=24, help="held-out contexts to score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speaker", default="Mara")
    ap.add_argument("--adapter", type=Path, default=None, help="a trained adapter folder: generate real base and adapter replies")
    ap.add_argument("--export", type=Path, default=None, help="with --adapter: the chat export it was trained on")
    ap.add_argument("--model", default=None, help="with --adapter: the base model folder (default: the embedded model)")
    ap.add_argument("--max-new-tokens", type=int, default=TrainConfig().sample_max_new_tokens)
    a = ap.parse_args()

    if a.adapter:
        if not a.export:
            ap.error("--adapter needs --export, the chat the adapter was trained on")
        replies, train_s = engine_replies(a.adapter, a.model, a.seed, a.max_new_tokens)
        _say(f"scoring {a.export.name}: generating up to {2 * a.k} replies")
        result = measure_voice(_examples(a.export, a.speaker), replies, k=a.k).as_dict()
        spent = sum(result["seconds"].values()) if result["seconds"] else None
        out = {
            "export": str(a.export),
            "adapter": str(a.adapter),
            "replies": "generated: base + card and adapter, same seed per context",
            **result,
            "train_seconds": train_s,
            "measure_share_of_training": round(spent / train_s, 3) if spent and train_s else None,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return

    tmp = Path(tempfile.mkdtemp(prefix="voice-bench-"))
    out = {"replies": "stand-ins: base = other speakers' held-out turns; adapter = half the speaker's own, half others'", "exports": {}}
    for style in STYLES:
        path = write_group_export(tmp / f"{style}.txt", style=style, messages=a.messages, seed=a.seed)
        _say(f"{style}: measuring on {path}")
        examples = _examples(path, a.speaker)
        t0 = time.perf_counter()
        result = measure_voice(examples, stand_in_replies(examples, a.seed), k=a.k).as_dict()
        result["wall_seconds"] = round(time.perf_counter() - t0, 2)
        result.pop("replies")  # the stand-ins are chat lines already in the export
        out["exports"][style] = result
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
