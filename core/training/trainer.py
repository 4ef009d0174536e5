"""One training run with transformers' Trainer: progress out, cancel in, checkpoints on disk.

`fit` takes the guarded QLoRA model (core.training.qlora), tokenized train/held-out items
and the resolved plan, and runs HF Trainer with three callbacks:

- progress: every logged step (loss, learning rate, tokens/s, ETA) and every held-out
  evaluation go to `report(dict)` (the worker writes them to the store and the log);
- cancel: `should_stop()` is checked after every optimizer step (and micro-step), so a
  cancel takes effect within one step;
- checkpoints: `checkpoint-N` folders under `<run>/checkpoints`, each marked complete by
  a `chorus_complete` file written after Trainer has finished saving it, so a kill in
  the middle of a save never resumes from a torn checkpoint;
- the best step: whenever a held-out evaluation beats every earlier one, the LoRA weights
  of that step go to `<run>/best` (`best_record`, `restore_best`), so a run whose later
  steps overfit can publish its best step rather than its last. Trainer's own
  `load_best_model_at_end` would need checkpoints on every evaluation step; these are
  only the LoRA matrices (a few MB), written only when the loss improves.

The loss is core.training.loss's: the head and the cross-entropy only where labels are
set, in chunks, normalised by the labelled tokens of the whole optimizer step (all its
micro-batches), so gradient accumulation gives the same step as one big batch. Trainer's
evaluation is replaced by `evaluate.heldout_loss` on the same held-out items, so the
validation curve and the "before"/"after" figures are one token-weighted measure. It runs
in `qlora.no_grad_eval` (4-bit layers in train mode), and the trainer still checks after
every evaluation that no layer was repacked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from core.training.config import Plan, TrainConfig
from core.training.dataset import Collator, ListDataset
from core.training.memory import release_freed_memory
from core.training.qlora import packed_layers
from core.training.runner import fault_point

COMPLETE = "chorus_complete"
BEST = "best"  # <run>/best: adapter_model.safetensors and best.json {"step", "eval_loss"}
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class TrapSprung(RuntimeError):
    """A 4-bit layer was repacked for CPU inference during training (see qlora.py)."""


def complete_checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _CKPT.match(child.name)
        if m and child.is_dir() and (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint; torn ones (killed mid-save) are removed."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.iterdir():
            if _CKPT.match(child.name) and not (child / COMPLETE).is_file():
                shutil.rmtree(child, ignore_errors=True)
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def _save_best(model, folder: Path, step: int, loss: float) -> None:
    """The LoRA weights of `step`, the best evaluated so far, into `folder`. Written beside
    it and then swapped in: a kill in between leaves no best (the last step is published
    then), never a torn one."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(tmp / "adapter_model.safetensors"))
    (tmp / "best.json").write_text(json.dumps({"step": int(step), "eval_loss": float(loss)}), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def best_record(run_dir: Path, upto_step: int | None = None) -> dict | None:
    """{"step", "eval_loss"} of the best evaluated step saved in `run_dir`, or None (none
    saved, or saved by an attempt past `upto_step`, whose steps a resume replays)."""
    try:
        record = json.loads((Path(run_dir) / BEST / "best.json").read_text(encoding="utf-8"))
        step, loss = int(record["step"]), float(record["eval_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if upto_step is not None and step > upto_step:
        return None
    return {"step": step, "eval_loss": loss}


def restore_best(model, run_dir: Path) -> None:
    """Load the best step's LoRA weights (see `best_record`) into `model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(run_dir) / BEST / "adapter_model.safetensors")))


def _callbacks(report, should_stop, model, plan: Plan, run_dir: Path, best: dict | None):
    from transformers import TrainerCallback

    class Chorus(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.step0 = 0
            self.tokens0 = 0
            self.eval_s = 0.0  # seconds spent in held-out evaluations since on_train_begin
            self.stopped = False
            self.best = best  # {"step", "eval_loss"} of the best evaluation so far (this run)

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.step0 = state.global_step
            self.tokens0 = state.num_input_tokens_seen
            report({"event": "start", "step": state.global_step, "total_steps": state.max_steps})

        def _check(self, control):
            if should_stop():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
            return control

        def on_substep_end(self, args, state, control, **kw):
            return self._check(control)

        def on_step_end(self, args, state, control, **kw):
            release_freed_memory()
            return self._check(control)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            elapsed = time.perf_counter() - self.t0
            done = state.global_step - self.step0
            per_step = elapsed / done if done else None
            row = {"step": state.global_step, "total_steps": state.max_steps, "elapsed_s": round(elapsed, 2)}
            if "loss" in logs:
                row.update(event="train", loss=float(logs["loss"]), learning_rate=float(logs.get("learning_rate", 0.0)))
                if "grad_norm" in logs:
                    row["grad_norm"] = float(logs["grad_norm"])
                # non-padding tokens (prompt and reply) through forward and backward, per
                # second of training: the held-out evaluations in between are not counted
                tokens = state.num_input_tokens_seen - self.tokens0
                busy = elapsed - self.eval_s
                row["tokens_per_s"] = round(tokens / busy, 1) if busy > 0 else None
                row["s_per_step"] = round(per_step, 3) if per_step else None
                row["eta_s"] = round(per_step * (state.max_steps - state.global_step), 1) if per_step else None
            elif "eval_loss" in logs:
                self.eval_s += float(logs.get("eval_seconds", 0.0))
                loss = float(logs["eval_loss"])
                row.update(event="eval", eval_loss=loss, eval_seconds=logs.get("eval_seconds"))
                if self.best is None or loss < self.best["eval_loss"]:
                    _save_best(model, Path(run_dir) / BEST, state.global_step, loss)
                    self.best = {"step": state.global_step, "eval_loss": loss}
            else:
                return
            report(row)

        def on_evaluate(self, args, state, control, **kw):
            release_freed_memory()
            if packed_layers(model):
                raise TrapSprung("a 4-bit layer was repacked during evaluation; gradients would stop flowing")

        def on_save(self, args, state, control, **kw):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                fault_point("checkpoint", state.global_step)  # written, not yet marked complete
                (folder / COMPLETE).write_text(str(state.global_step))
                report({"event": "checkpoint", "step": state.global_step, "total_steps": state.max_steps})

    return Chorus()


def _trainer_class(eval_items: list[dict], pad_id: int, eval_batch: int):
    """transformers' Trainer with Chorus's loss and held-out evaluation (see the module doc)."""
    from transformers import Trainer

    from core.training.evaluate import heldout_loss
    from core.training.loss import loss_sum

    class ChorusTrainer(Trainer):
        # compute_loss already divides by the labelled tokens of the whole accumulated step
        loss_is_scaled_for_ga = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Makes Trainer count the labelled (shifted) tokens over all micro-batches of a
            # step and pass the count to compute_loss as num_items_in_batch.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            total, count = loss_sum(model, inputs)
            denom = num_items_in_batch if num_items_in_batch is not None else count
            loss = total / (denom.clamp(min=1).to(total.device) if hasattr(denom, "clamp") else max(denom, 1))
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            result = heldout_loss(self.model, eval_items, pad_id, adapter=True, batch_size=eval_batch)
            metrics = {
                f"{metric_key_prefix}_loss": result["loss"],
                f"{metric_key_prefix}_tokens": result["tokens"],
                f"{metric_key_prefix}_seconds": result["seconds"],
            }
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return ChorusTrainer


def _recent_loss(log_history: list[dict]) -> float | None:
    """Mean training loss of the last 5 logged steps (the run's final train loss)."""
    losses = [h["loss"] for h in log_history if "loss" in h][-5:]
    return round(sum(losses) / len(losses), 4) if losses else None


def _finished_checkpoint(model, checkpoint: Path) -> dict:
    """A run killed after its last checkpoint (while evaluating or saving the adapter) needs
    no more training: the checkpoint holds the finished adapter. Trainer is not asked to
    resume it, because transformers 5.23 runs one step past max_steps when resumed at the
    last step."""
    import json

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state["global_step"])
    return {
        "stopped": False,
        "step": step,
        "resumed_from": step,
        "train_loss": _recent_loss(state.get("log_history", [])),
        "train_loss_mean": None,
        "best": best_record(checkpoint.parent.parent, step),
    }


def fit(
    model,
    tokenizer,
    train_items: list[dict],
    eval_items: list[dict],
    plan: Plan,
    config: TrainConfig,
    run_dir: Path,
    *,
    report: Callable[[dict], None] = lambda row: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint: Path | None = None,
) -> dict:
    """Train `model` (a PeftModel in train mode) per `plan`, from `checkpoint` if given
    (see `latest_checkpoint`); returns
    {"stopped": bool, "step": int, "resumed_from": int | None, "train_loss": float | None,
    "best": {"step", "eval_loss"} of the best held-out evaluation during training, or None}."""
    from transformers import PrinterCallback, TrainingArguments

    from core.device import model_device

    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None and int(_CKPT.match(checkpoint.name).group(1)) >= plan.steps:
        return _finished_checkpoint(model, checkpoint)
    # A best step from an attempt that went past the checkpoint being resumed is dropped:
    # those steps are replayed (and evaluated) again.
    best = best_record(run_dir, int(_CKPT.match(checkpoint.name).group(1)) if checkpoint else 0)
    if best is None:
        shutil.rmtree(Path(run_dir) / BEST, ignore_errors=True)
    # Follow the model, not torch.cuda.is_available(): with CHORUS_DEVICE=cpu on a machine
    # with a GPU, Trainer would otherwise send every batch to cuda:0 while the model is on the CPU.
    use_cpu = model_device(model).type == "cpu"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=plan.steps,
        per_device_train_batch_size=plan.micro_batch_size,
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=plan.learning_rate,  # set, or by model size (core/training/sizing.py)
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=plan.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=plan.optimizer,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if eval_items else "no",
        eval_steps=plan.eval_every,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=plan.save_every,
        save_total_limit=config.keep_checkpoints,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=use_cpu,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: less padding to compute
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )
    callback = _callbacks(report, should_stop, model, plan, run_dir, best)
    # evaluation keeps no activations for a backward pass: the whole batch fits where a micro-batch does
    trainer = _trainer_class(eval_items, tokenizer.pad_token_id, plan.batch_size)(
        model=model,
        args=args,
        train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through `report`, not stdout
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model.train()
    if packed_layers(model):
        raise TrapSprung("a 4-bit layer was repacked during training")
    return {
        "stopped": callback.stopped,
        "step": trainer.state.global_step,
        "resumed_from": int(_CKPT.match(checkpoint.name).group(1)) if checkpoint else None,
        "train_loss": _recent_loss(trainer.state.log_history),
        "train_loss_mean": float(result.training_loss) if result and result.training_loss is not None else None,
        "best": callback.best,
    }
