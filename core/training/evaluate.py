"""Held-out proof that the adapter learned the voice: loss, perplexity and sample replies.

The held-out examples are the most recent part of the export, rendered exactly like the
training ones (persona card as system prompt, loss on the speaker's replies only).
`heldout_loss` gives the token-weighted mean loss over those replies with the adapter
off (base model + card alone) or on; `sample_replies` answers a few held-out prompts
with the same seed, base against adapter, beside the speaker's real reply.

Everything here runs inside `qlora.no_grad_eval`, so the training process never puts a
4-bit layer through bitsandbytes' CPU repacking (see qlora.py). The loss is
core.training.loss's (head and cross-entropy at labelled positions only, in chunks): the
same token-weighted measure as the Trainer's steps and its validation curve. Every
tensor goes to the model's device (core.device.on_model): a model on `cuda:0` with a
single-device map has no hooks that would move CPU inputs.
"""

from __future__ import annotations

import contextlib
import math
import time

from core.device import on_model
from core.training.dataset import Collator
from core.training.loss import loss_sum
from core.training.qlora import no_grad_eval


def _adapter(model, enabled: bool):
    if enabled or not hasattr(model, "disable_adapter"):
        return contextlib.nullcontext()
    return model.disable_adapter()


def heldout_loss(model, items: list[dict], pad_id: int, *, adapter: bool = True, batch_size: int = 8) -> dict:
    """{"loss", "perplexity", "tokens", "examples", "seconds"} over `items`' labelled tokens:
    the summed loss of every labelled token divided by their number (token-weighted)."""
    if not items:
        return {"loss": None, "perplexity": None, "tokens": 0, "examples": 0, "seconds": 0.0}
    collate = Collator(pad_id)
    total, count = 0.0, 0
    t0 = time.perf_counter()
    with no_grad_eval(model), _adapter(model, adapter):
        for i in range(0, len(items), batch_size):
            batch = {k: on_model(model, v) for k, v in collate(items[i : i + batch_size]).items()}
            loss, n = loss_sum(model, batch)
            total += float(loss)
            count += n
    mean = total / max(count, 1)
    return {
        "loss": round(mean, 4),
        "perplexity": round(math.exp(min(mean, 50)), 2),
        "tokens": count,
        "examples": len(items),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def sample_prompts(examples: list[dict], n: int) -> list[dict]:
    """Up to `n` held-out prompts: each example's turns before its last reply, and that reply."""
    out = []
    step = max(1, len(examples) // max(n, 1))
    for ex in examples[::step]:
        msgs = ex["messages"]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if not last:  # no reply, or a reply with nothing before it to answer
            continue
        turns = [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]  # without the "seen" marks
        out.append({"turns": turns, "real": msgs[last]["content"]})
        if len(out) >= n:
            break
    return out


def sample_replies(model, tokenizer, persona: dict, prompts: list[dict], *, seed: int, max_new_tokens: int,
                   budget: int = 1024, batch_size: int = 24) -> list[dict]:
    """Base and adapter replies to each prompt beside the real reply, `batch_size` prompts
    per `generate` call (left-padded), the same seed for base and adapter.

    Batched for cost: the voice measure answers about 24 prompts twice, and one prompt at a
    time took about a third of a run's training time. Sampling stays (temperature 0.7, as
    in chat): the measure judges what the persona writes when it chats. Same-seed semantics:
    before each batch the generator is seeded with `seed + index of its first prompt`, for
    the base and then for the adapter, so the two see the same random draws row by row. A
    reply sampled in a batch is not the reply the same prompt gets alone (the batch shares
    one random stream, and padding changes the kernels' shapes): compare replies of one
    call with each other, not with a chat reply.
    """
    import torch

    from core.prompting import build_prompt
    from core.thinking import split_thinking

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [{"prompt": p["turns"][-1]["content"], "real": p["real"]} for p in prompts]
    for start in range(0, len(prompts), max(1, batch_size)):
        chunk = prompts[start : start + batch_size]
        encoded = [build_prompt(tokenizer, persona, p["turns"], budget).input_ids for p in chunk]
        width = max(len(ids) for ids in encoded)
        # Left padding: every row's last prompt token sits at the same position, where generation starts.
        ids = on_model(model, torch.tensor([[pad] * (width - len(x)) + list(x) for x in encoded]))
        mask = on_model(model, torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded]))
        for label, enabled in (("base", False), ("adapter", True)):
            torch.manual_seed(seed + start)
            with no_grad_eval(model), _adapter(model, enabled):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=True,
                    temperature=0.7,
                    top_p=0.95,
                    top_k=50,
                    repetition_penalty=1.1,
                    pad_token_id=pad,
                    use_cache=True,
                )
            for i, row in enumerate(out):
                # A reasoning model's <think> block is not the persona's words (core.thinking).
                rows[start + i][label] = split_thinking(tokenizer.decode(row[width:], skip_special_tokens=True))[0]
    return rows
