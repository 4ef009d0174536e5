"""Two small pieces of the decoder recomputed in the backward pass instead of kept.

What one training forward of SmolLM2-135M keeps for its backward pass, 4 x 180 tokens
(counted with torch.autograd.graph.saved_tensors_hooks): 512 MB, of which

- 100 MB are the RMSNorms' fp32 copies of their bf16 input (Llama's norm upcasts, and
  `pow` and the multiply keep the fp32 tensor), two per layer;
- 66 MB are the gated MLP's `act_fn(gate)`, which `act_fn(gate) * up` keeps beside gate
  and up (themselves kept by the activation's and the product's backward).

Both are cheap to compute again. Each norm, and each `act_fn(gate) * up`, runs under
non-reentrant activation checkpointing: the backward pass recomputes it from its inputs
(the norm's bf16 input, 50 MB for the same batch; gate and up, which are kept anyway)
with the very same ops, so the loss and every gradient are bitwise those of the plain
forward. About 116 MB less per 720 tokens, for two extra elementwise passes.

Only modules whose shape is the one known here are taken over: a norm with a weight and
a forward of one tensor, and an MLP with gate_proj, up_proj, down_proj and act_fn (Llama,
Mistral, Qwen2/3, Gemma, SmolLM). Phi-3's fused gate_up_proj and anything else keep
their own forward.
"""

from __future__ import annotations

import functools

from torch.utils.checkpoint import checkpoint


def _recomputed_norm(norm_forward, x):
    return checkpoint(norm_forward, x, use_reentrant=False) if x.requires_grad else norm_forward(x)


def _gated(act, gate, up):
    return act(gate) * up


def _lean_mlp(mlp, x):
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    if gate.requires_grad or up.requires_grad:
        hidden = checkpoint(_gated, mlp.act_fn, gate, up, use_reentrant=False)
    else:
        hidden = _gated(mlp.act_fn, gate, up)
    return mlp.down_proj(hidden)


def _is_norm(module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None


def _is_gated_mlp(module) -> bool:
    return type(module).__name__.endswith("MLP") and all(
        hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")
    )


def install(model) -> dict:
    """Give the decoder layers' norms and gated MLPs of `model` the recomputing forward;
    returns how many of each."""
    counts = {"norms": 0, "mlps": 0}
    for module in model.modules():
        if getattr(module, "_chorus_recompute", False):
            continue
        if _is_norm(module):
            module.forward = functools.partial(_recomputed_norm, module.forward)
            counts["norms"] += 1
        elif _is_gated_mlp(module):
            module.forward = functools.partial(_lean_mlp, module)
            counts["mlps"] += 1
        else:
            continue
        module._chorus_recompute = True
    return counts
