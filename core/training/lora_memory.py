"""LoRA's training forward without peft's fp32 copy of every layer input.

peft casts each LoRA layer's input to the adapter's dtype (fp32) before `lora_A`, and
autograd keeps that copy for `lora_A`'s gradient: q, k and v each keep their own fp32 copy
of one bf16 input. On SmolLM2-135M at 4 x 256 tokens that is 585 MB of the 1.1 GB one
micro-batch keeps for the backward pass (bench/train_bench.py, peak RSS). `LoraDelta` does
the same arithmetic in fp32 but keeps the input as it came (the bf16 tensor, which q, k
and v share) and casts it again in the backward pass: the fp32 cast of a bf16 tensor is
exact, so the gradients are those of peft's path, for about 0.4 GB less per micro-batch.

Only the plain case is taken over (one active LoRA adapter, no dropout, no DoRA or other
variant, not merged, no per-row adapter names); anything else runs peft's own forward.
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch
import torch.nn.functional as F


class LoraDelta(torch.autograd.Function):
    """scaling * B(A(x)), computed in A's dtype and returned in `out_dtype`.

    The scaling is applied to the rank-r tensors (h in the forward pass, the small
    products in the backward pass) rather than to the (tokens, out) ones: the same
    arithmetic for one pass less over the widest tensor each way (exact when the scaling
    is a power of two, as alpha = 2 * rank makes it; otherwise within fp32 rounding)."""

    @staticmethod
    def forward(ctx, x, a, b, scaling: float, out_dtype, x_cast=None):
        h = F.linear(x_cast if x_cast is not None else x.to(a.dtype), a)
        ctx.save_for_backward(x, h, a, b)
        ctx.scaling = scaling
        return F.linear(h * scaling, b).to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        x, h, a, b = ctx.saved_tensors
        s = ctx.scaling
        g2, h2 = grad.reshape(-1, grad.shape[-1]).to(b.dtype), h.reshape(-1, h.shape[-1])
        grad_b = g2.t().mm(h2).mul_(s) if ctx.needs_input_grad[2] else None
        gh = g2.mm(b).mul_(s)
        grad_a = gh.t().mm(x.reshape(-1, x.shape[-1]).to(a.dtype)) if ctx.needs_input_grad[1] else None
        grad_x = gh.mm(a).to(x.dtype).reshape(x.shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, grad_b, None, None, None


class _LastCast(threading.local):
    """The fp32 copy of the last layer input cast (per thread): q, k and v (and gate and
    up) get the same input tensor, which is then cast once instead of three (two) times.
    Keyed by the tensor itself (a weak reference) and its version, so an input changed in
    place, or a new tensor at the same address, is cast again."""

    ref = version = dtype = cast = None

    def __call__(self, x, dtype):
        if self.ref is not None and self.ref() is x and self.version == x._version and self.dtype == dtype:
            return self.cast
        with torch.no_grad():
            cast = x.to(dtype)
        self.ref, self.version, self.dtype, self.cast = weakref.ref(x), x._version, dtype, cast
        return cast


_last_cast = _LastCast()


def _plain_adapter(layer):
    """The one adapter name `layer` would apply in peft's plain path, or None."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    return name


def _lean_forward(layer, peft_forward, x, *args, **kwargs):
    name = None if kwargs.get("adapter_names") is not None or torch.is_autocast_enabled() else _plain_adapter(layer)
    if name is None:
        return peft_forward(x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    x_cast = _last_cast(x, a.dtype) if x.dtype != a.dtype else None
    return result + LoraDelta.apply(x, a, b, layer.scaling[name], result.dtype, x_cast)


def install(model) -> int:
    """Give every LoRA layer of `model` the lean training forward; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not getattr(module, "_chorus_lean", False):
            module.forward = functools.partial(_lean_forward, module, module.forward)
            module._chorus_lean = True
            count += 1
    return count
