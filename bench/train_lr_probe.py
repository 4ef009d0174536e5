"""Learning-rate probe for persona training on the embedded model, outside the CPU trap.

    python bench/train_lr_probe.py --lrs 2e-4,5e-4,1e-3 --steps 40 [--export FILE --speaker NAME]

For each learning rate: a fresh QLoRA adapter with the TrainConfig defaults (r=16,
alpha=32, all linear layers, dropout 0.05, cosine, warmup, clipping), batch 8, `--steps`
steps through core.training (the same guarded model and Trainer the app uses), with the
held-out loss measured at the start and every `--eval-every` steps. Prints one JSON
object. Without --export it trains on bench/train_synth_export.py's 1,000-message chat.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_synth_export import write_export  # noqa: E402
from core.chatimport import build_examples, load_export  # noqa: E402
from core.model_source import ModelSource, resolve_model  # noqa: E402
from core.prompting import system_prompt  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.training.config import TrainConfig, plan  # noqa: E402
from core.training.dataset import encode_all, lengths  # noqa: E402
from core.training.evaluate import heldout_loss  # noqa: E402
from core.training.qlora import add_lora, load_for_training  # noqa: E402
from core.training.trainer import fit  # noqa: E402
from storage.paths import chorus_home  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="2e-4,5e-4,1e-3")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--export", default=None)
    ap.add_argument("--speaker", default="Mara")
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--eval-examples", type=int, default=40)
    a = ap.parse_args()
    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="lr-probe-"))
    export = Path(a.export) if a.export else write_export(tmp / "chat.txt", 1000)
    source = ModelSource(Path(a.model).name, Path(a.model)) if a.model else resolve_model(None, chorus_home(), lambda m: None)
    persona = {"name": a.speaker}
    system = system_prompt(persona)
    results = {"export": str(export), "speaker": a.speaker, "steps": a.steps, "runs": []}
    for lr in [float(x) for x in a.lrs.split(",")]:
        model, tokenizer, info = load_for_training(source)
        ex = build_examples(load_export(export), a.speaker, count_tokens=lambda s: len(tokenizer.encode(s)))
        cfg = TrainConfig(learning_rate=lr, max_steps=a.steps, eval_every=a.eval_every, save_every=10_000)
        lens = lengths(tokenizer, system, ex.train)
        p = plan(cfg, len(ex.train), len(ex.validation), lens, "cpu", model.config)
        train = encode_all(tokenizer, system, ex.train, p.max_seq_len).items
        held = encode_all(tokenizer, system, ex.validation[-a.eval_examples :], p.max_seq_len).items
        model = add_lora(model, cfg, gradient_checkpointing=False)
        rows = []
        before = heldout_loss(model, held, tokenizer.pad_token_id)
        t0 = time.perf_counter()
        def report(row, lr=lr):
            rows.append(row)
            if row.get("event") in ("train", "eval"):
                print(json.dumps({"lr": lr, **row}), file=sys.stderr, flush=True)

        out = fit(model, tokenizer, train, held, p, cfg, tmp / f"run-{lr}", report=report)
        wall = time.perf_counter() - t0
        after = heldout_loss(model, held, tokenizer.pad_token_id)
        evals = {0: before["loss"], **{r["step"]: round(r["eval_loss"], 4) for r in rows if r.get("event") == "eval"}}
        trains = [r for r in rows if r.get("event") == "train"]
        results["runs"].append(
            {
                "lr": lr,
                "heldout_loss": evals,
                "final_ratio": round(after["loss"] / before["loss"], 3),
                "train_loss_last": out["train_loss"],
                "s_per_step": round(wall / a.steps, 2),
                "tokens_per_s": trains[-1]["tokens_per_s"] if trains else None,
                "max_seq_len": p.max_seq_len,
            }
        )
        print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)  # a partial result, in case of a timeout
        del model
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
