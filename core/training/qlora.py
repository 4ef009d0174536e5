"""The QLoRA model for training: the served base in NF4, frozen, with LoRA adapters on top,
made safe from bitsandbytes' CPU repacking.

THE TRAP (../shared/FINDINGS.md): on CPUs with AVX512-BF16, bitsandbytes repacks a
`Linear4bit` weight the first time the layer runs in eval mode on an input that needs no
gradient (`quant_state.packing_format_for_cpu`); from then on no gradient flows through
the frozen 4-bit layers and the lower LoRA matrices stop learning, silently.
`from_pretrained` returns the model in eval mode. Two guards, both applied here:

1. `disable_cpu_packing` turns the repacking off on every 4-bit layer of this process
   (and undoes it where it already happened), so no forward in any mode can trigger it;
2. `no_grad_eval` evaluates with dropout off but the 4-bit layers left in train mode.

`packed_layers(model)` counts repacked layers; the trainer asserts it stays 0.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def linear4bit_modules(model) -> list:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def packed_layers(model) -> int:
    """How many 4-bit layers carry bitsandbytes' CPU inference packing."""
    return sum(bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)) for m in linear4bit_modules(model))


def disable_cpu_packing(model) -> int:
    """Make every 4-bit layer of `model` ineligible for CPU repacking; unpack any that were
    packed already. Returns how many had to be unpacked (0 unless the trap was sprung)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    unpacked = 0
    for m in linear4bit_modules(model):
        m.support_avx512bf16_for_cpu = False
        qs = getattr(m.weight, "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)
            unpacked += 1
    if unpacked:
        log.warning("%d 4-bit layers had been repacked for CPU inference; unpacked them for training", unpacked)
    return unpacked


@contextlib.contextmanager
def no_grad_eval(model):
    """Evaluate without gradients and without dropout, keeping the 4-bit layers in train
    mode (belt and braces beside `disable_cpu_packing`). Restores the previous modes."""
    import torch

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in linear4bit_modules(model):
            m.train(True)
        with torch.no_grad():
            yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def load_for_training(source, device: str | None = None):
    """The base model in NF4, guarded and in train mode before any forward.

    Returns (model, tokenizer, info). It computes in `core.device.training_dtype` (bf16,
    or fp32 on CPUs without fast bf16 matmuls). Frozen weights stay as loaded (embeddings
    and norms in that dtype): peft's prepare_model_for_kbit_training would upcast them to fp32, about
    +60 MB on SmolLM2-135M for no measured gain; gradient checkpointing is enabled by
    the trainer when the plan asks for it.
    """
    from core.device import pick_device, training_dtype
    from core.loader import load_base
    from core.training import attention as training_attention
    from core.training.memory import release_freed_memory

    device = device or pick_device()
    model, tokenizer, info = load_base(source, quantize=True, device=device, dtype=training_dtype(device))
    release_freed_memory()  # what loading and quantizing freed (about 0.4 GB on SmolLM2-135M)
    training_attention.use(model)
    disable_cpu_packing(model)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    return model, tokenizer, info


def linear_names(model) -> list[str]:
    """The names (last part) of the model's linear layers, its output head and any LoRA
    matrices excepted: what "all linear layers" means for its family (Llama's q_proj ...
    down_proj; Phi-3's fused qkv_proj and gate_up_proj). 4-bit layers are Linear too."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or ".lora_" in name:
            continue
        parts = name.split(".")
        if parts[-1] == "base_layer":  # a peft-wrapped layer: its own name is the wrapper's
            parts.pop()
        names.add(parts[-1])
    return sorted(names)


def lora_targets(model, wanted) -> list[str]:
    """The module names to put LoRA on. The default (every linear layer, which TrainConfig
    spells with Llama's names) or "all-linear" -> this model's own linear layers by their
    short names (peft's "all-linear" would record every layer's full path in the adapter's
    config); a list the user chose is kept if the model has every name in it, else refused
    with the names it has."""
    from core.training.config import ALL_LINEAR, TrainConfigInvalid

    have = linear_names(model)
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    if sorted(wanted) in (sorted(ALL_LINEAR), ["all-linear"]):
        return have
    missing = [t for t in wanted if t not in have]
    if missing:
        raise TrainConfigInvalid(
            f"target_modules: {type(model).__name__} has no linear layer named {', '.join(missing)}; "
            f"its linear layers are {', '.join(have)} (leave the default to train them all)."
        )
    return wanted


def add_lora(model, config, *, gradient_checkpointing: bool):
    """Wrap `model` with fresh LoRA adapters per `config` (a TrainConfig); train mode. The
    targets are the model's own module names (`lora_targets`)."""
    from peft import LoraConfig, get_peft_model

    from core.training import lean_blocks, lora_memory

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=lora_targets(model, config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    lora_memory.install(peft_model)  # the fp32 copy of every layer input is not kept
    if not gradient_checkpointing:  # whole layers are recomputed then; nothing to gain
        lean_blocks.install(peft_model)  # norms and the MLP's activation recomputed, not kept
    peft_model.train()
    return peft_model


def lowest_lora_a(model):
    """The lora_A weight of the first targeted module of layer 0 (the trap's victim)."""
    for name, p in model.named_parameters():
        if "lora_A" in name and ".layers.0." in name:
            return name, p
    raise LookupError("the model has no LoRA matrix in layer 0")
