"""The training loss, computed only where labels are set and a chunk of rows at a time.

A causal LM's own forward runs the output head over every position and returns fp32-sized
logits for all of them: batch x sequence x vocabulary (8 x 192 x 49,152 on SmolLM2 is
75 M numbers, several copies of which autograd keeps for the backward pass). The loss
only needs the positions whose next token is labelled (the speaker's replies), so here:

1. the decoder (with its LoRA layers, which peft injects in place) gives the last hidden
   states, (B, T, H);
2. the hidden states at labelled positions are gathered, (N, H), with their targets
   (labels shifted by one, as the model's own loss does);
3. the head and the cross-entropy run over chunks of rows; in training each chunk is
   wrapped in activation checkpointing, so autograd keeps only the chunk's (rows, H)
   input and recomputes its logits in the backward pass: fp32 logits exist for one
   chunk at a time, never for the whole vocabulary x all positions.

`loss_sum` returns the summed loss and the number of labelled tokens, so every caller
(the Trainer's steps, its evaluations, the held-out loss before and after) reports the
same token-weighted mean. The head is whatever module the model uses for output
embeddings, so a tied head (SmolLM2's lm_head shares the embedding matrix) stays tied.
"""

from __future__ import annotations

IGNORE = -100
CHUNK_BYTES = 32 << 20  # fp32 logits of one chunk: 170 rows of SmolLM2's 49,152-token vocabulary


def causal_lm(model):
    """The transformers causal LM under a peft wrapper (its layers carry the LoRA adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunk_rows(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's fp32 logits take about `chunk_bytes`."""
    return max(8, chunk_bytes // (4 * max(int(vocab_size), 1)))


def _head_loss(head, hidden, targets, softcap):
    import torch
    import torch.nn.functional as F

    logits = head(hidden).float()  # the model's own forward also upcasts before its loss
    if softcap:  # Gemma-style final logit soft-capping, as the model's forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def loss_sum(model, batch: dict, *, rows: int | None = None):
    """(summed cross-entropy over the labelled next tokens, their count) for one batch
    {"input_ids", "attention_mask", "labels"} already on the model's device."""
    import torch
    from torch.utils.checkpoint import checkpoint

    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE
    h = hidden[:, :-1][keep]  # (N, H): only the positions the loss is on
    y = targets[keep]  # (N,)
    n = int(y.numel())
    if n == 0:  # keep the graph connected so a backward pass is still valid
        return hidden.float().sum() * 0.0, 0
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    step = rows or chunk_rows(getattr(head, "out_features", None) or lm.config.vocab_size)
    grad = torch.is_grad_enabled() and h.requires_grad
    total = None
    for i in range(0, n, step):
        args = (head, h[i : i + step], y[i : i + step], softcap)
        # Checkpointing recomputes this chunk's logits in the backward pass instead of
        # keeping them (and the softmax) for every chunk until then.
        part = checkpoint(_head_loss, *args, use_reentrant=False) if grad else _head_loss(*args)
        total = part if total is None else total + part
    return total, n
