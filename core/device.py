"""Where Chorus's tensors live: the device the model runs on, chosen once.

CUDA when there is one, else the CPU; `CHORUS_DEVICE=cpu|cuda` forces it (tests and
benchmarks use it to pin a machine with a GPU to the CPU, or to fail loudly where CUDA was
expected). Every tensor Chorus creates for a model goes through `on_model`, so nothing
is built on the CPU for a model on `cuda:0`: a single-device map adds no hooks that
would move it.
"""

from __future__ import annotations

import os

from core.errors import ChorusError

CHOICES = ("cpu", "cuda")


def pick_device() -> str:
    """'cuda' or 'cpu': CHORUS_DEVICE if set, else CUDA when torch sees one."""
    import torch

    forced = os.environ.get("CHORUS_DEVICE", "").strip().lower()
    if forced:
        if forced not in CHOICES:
            raise ChorusError(f"CHORUS_DEVICE={forced!r} is not one of {', '.join(CHOICES)}; unset it or pick one.")
        if forced == "cuda" and not torch.cuda.is_available():
            raise ChorusError("CHORUS_DEVICE=cuda, but torch sees no CUDA device here; unset it to run on the CPU.")
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_device(model):
    """The torch.device of the model's input embeddings (where input ids must go)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    param = next(emb.parameters()) if emb is not None else next(model.parameters())
    return param.device


def on_model(model, data, dtype=None):
    """`data` (a tensor, or nested lists of numbers) as a tensor on the model's device."""
    import torch

    device = model_device(model)
    if isinstance(data, torch.Tensor):
        return data.to(device=device, dtype=dtype) if dtype is not None else data.to(device)
    return torch.tensor(data, dtype=dtype or torch.long, device=device)


DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def training_dtype(device: str):
    """The dtype a training run computes in on `device`: bf16 on CUDA and on CPUs with
    bf16 matrix support (AVX512: torch's oneDNN path), fp32 elsewhere.

    On an AVX2-only CPU torch has no fast bf16 matmul: a 720 x 576 x 1536 matmul took
    147 ms in bf16 against 31 ms in fp32 (AMD EPYC with AVX2 only, 2026-12-07), and a
    training run of SmolLM2-135M trained 5.5 tokens/s against 108 in fp32. fp32 there
    doubles the activations (the micro-batch plan accounts for it) and keeps the weights
    in NF4. `CHORUS_TRAIN_DTYPE=bf16|fp32` forces one."""
    import torch

    forced = forced_dtype("CHORUS_TRAIN_DTYPE")
    if forced is not None:
        return forced
    if device == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def forced_dtype(variable: str):
    """The dtype the environment variable `variable` names ("bf16" or "fp32"), or None when
    it is unset; a ChorusError that lists the choices when it names something else."""
    import torch

    forced = os.environ.get(variable, "").strip().lower()
    if not forced:
        return None
    if forced not in DTYPES:
        raise ChorusError(f"{variable}={forced!r} is not one of {', '.join(DTYPES)}; unset it or pick one.")
    return getattr(torch, DTYPES[forced])


def cpu_has_fast_bf16() -> bool:
    """Whether torch runs bf16 matmuls on this CPU through oneDNN (AVX512 and newer)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
