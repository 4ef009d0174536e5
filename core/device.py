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
