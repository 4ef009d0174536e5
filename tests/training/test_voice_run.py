"""The voice measure and the best step inside a real training run (tiny model, worker
process): the voice match in evaluation.json, `train --json` and the text summary; the
step with the lowest held-out loss published when later steps overfit."""

import json
from argparse import Namespace
from pathlib import Path

from bench.voice_export import write_group_export
from core.training.cli import print_result, train_command
from tests.training.conftest import SHAREGPT, tiny_config


def test_a_run_measures_the_voice_and_train_json_reports_it(store, tiny_model_dir, tmp_path, capsys):
    export = write_group_export(tmp_path / "group.txt", style="strong", messages=1200)
    config = json.dumps(tiny_config(max_steps=2, samples=2, voice_k=10))
    args = Namespace(export=str(export), speaker="Mara", persona="Mara", steps=None, rank=4, json=True,
                     model=str(tiny_model_dir), config=config)
    assert train_command(args) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert "voice may be thin" not in out.err  # Mara has a few hundred messages
    for name in ("base", "adapter", "real"):
        assert 0.0 <= result[f"voice_match_{name}"] <= 1.0
        lo, hi = result[f"voice_match_{name}_ci"]
        assert lo <= result[f"voice_match_{name}"] <= hi
    assert result["voice_match_k"] == 10 and result["voice_match_reason"] is None
    assert result["voice_match_real"] >= 0.8  # the classifier knows her real replies; the tiny model's do not matter
    ev = json.loads((Path(result["adapter_dir"]) / "evaluation.json").read_text())
    replies = ev["voice"]["replies"]
    assert len(replies) == 10 and all(r["base"] is not None and r["adapter"] is not None for r in replies)
    assert ev["samples"] == replies[:2]  # the shown samples are the measure's replies, not generated again
    assert ev["voice"]["seconds"]["replies"] > 0
    st = next(r for r in _service(store, tiny_model_dir).runs() if r["id"] == result["run_id"])
    print_result(store, st, as_json=False)
    text = capsys.readouterr().out
    assert "Voice match (share of 10 held-out replies" in text and "adapter" in text


def test_overfit_run_publishes_its_best_step(store, tiny_model_dir, chorus_home, capsys):
    svc = _service(store, tiny_model_dir)
    cfg = tiny_config(max_steps=16, eval_every=1, learning_rate=1e-2, lr_scheduler="constant", warmup_ratio=0.0,
                      samples=0, voice_k=0, save_every=6)
    run_id = svc.start(SHAREGPT, "gpt", persona_name="Over", consent=True, config=cfg)
    st = svc.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    evals = {step: loss for step, loss in st["history"]["eval"] if step >= 1}
    assert len(evals) == 16
    best_step = min(evals, key=evals.get)
    ev = st["evaluation"]
    assert st["kept_step"] == ev["kept_step"] == best_step < st["step"] == 16
    # what was published is the best step: its held-out loss, measured again after restoring it
    assert abs(ev["after"]["loss"] - evals[best_step]) < 0.02
    assert ev["after"]["loss"] < ev["best"]["last"]["eval_loss"] and ev["best"]["overfit"]
    assert ev["after"]["loss"] <= min(evals.values()) + 0.02
    folder = store.adapters.folder(store.adapters.get(st["adapter_id"]))
    assert json.loads((folder / "evaluation.json").read_text())["kept_step"] == best_step
    assert json.loads((folder / "training_config.json").read_text())["result"]["kept_step"] == best_step
    assert f"weights of step {best_step}" in (folder / "README.md").read_text()
    assert not (chorus_home / "training" / run_id / "best").exists()  # tidied with the checkpoints
    print_result(store, st, as_json=False)
    assert f"Kept step {best_step} of 16" in capsys.readouterr().out


def _service(store, tiny_model_dir):
    from core.model_source import ModelSource
    from core.training.service import TrainingService

    return TrainingService(store, model=ModelSource("tiny-llama", tiny_model_dir))


def test_batched_replies_keep_the_order_and_the_same_seed_for_base_and_adapter(tiny_model_dir):
    """Prompts of different lengths in one left-padded batch; on a model without an adapter
    the base and the adapter pass are the same model with the same seed: the same replies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.training.evaluate import sample_replies

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.train()  # as in the training process (see qlora.py)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompts = [{"turns": [{"role": "user", "content": "hi " * n + f"q{n}"}], "real": f"a{n}"} for n in (1, 9, 3)]
    rows = sample_replies(model, tokenizer, {"name": "Mara"}, prompts, seed=3, max_new_tokens=5)
    assert [r["real"] for r in rows] == ["a1", "a9", "a3"] and rows[1]["prompt"] == "hi " * 9 + "q9"
    assert all(r["base"] == r["adapter"] for r in rows)
    assert model.training  # no_grad_eval restored the modes
    again = sample_replies(model, tokenizer, {"name": "Mara"}, prompts, seed=3, max_new_tokens=5)
    assert again == rows  # the seed makes the batch reproducible


def test_a_resume_keeps_a_best_step_from_before_its_checkpoint_only(tmp_path):
    from core.training.trainer import BEST, best_record

    assert best_record(tmp_path) is None
    (tmp_path / BEST).mkdir()
    (tmp_path / BEST / "best.json").write_text(json.dumps({"step": 6, "eval_loss": 1.5}))
    assert best_record(tmp_path, 10) == {"step": 6, "eval_loss": 1.5}
    assert best_record(tmp_path, 5) is None  # saved by an attempt past the checkpoint: replayed, so dropped
    (tmp_path / BEST / "best.json").write_text("{torn")
    assert best_record(tmp_path) is None
