"""Will the model fit? The memory a model needs in NF4, estimated from its config, against
what the device has free, checked before `from_pretrained` so that a model too large is
refused with figures instead of the process being killed by the OOM killer.

Parameters are counted on the model itself, built from its config on the meta device (no
memory is used): every family's own modules are counted as they are (fused projections,
q/k/v biases, q/k norms, a tied or untied head), and the modules bitsandbytes leaves
unquantized are the ones transformers' own quantizer skips (the output head, tied weights).

    weights  = quantized linear weights at BITS_NF4 bits + everything else in bf16 (fp32
               where the engine computes in fp32: `width`)
    kv cache = 2 (keys, values) x layers x kv heads x head_dim x context x width, per row;
               sliding-window layers hold at most their window
    overhead = one prompt pass's activations + the largest weight in bf16 while it is
               quantized during the load + headroom (HEADROOM_FRACTION, at least HEADROOM_MIN)

`CHORUS_MEMORY_CHECK=0` skips the refusal (the estimate is still computed and logged).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import ModelTooLarge

# 4 bits a weight plus the blockwise absmax (one byte per 64 weights with double quantization)
# and a margin; get_memory_footprint() counts the packed 4 bits only (the embedded model:
# 109.8 MB measured against 116 MB estimated).
BITS_NF4 = 4.5
BF16 = 2
HEADROOM_FRACTION = 0.10  # of weights + KV cache: allocator fragmentation, the tokenizer, adapters
HEADROOM_MIN = {"cpu": 512 * 2**20, "cuda": 256 * 2**20}
GB = 1e9

log = logging.getLogger("chorus")

# Smaller instruct models of each family, largest first: what a refusal suggests.
# (hub id, parameters in billions)
SMALLER = {
    "llama": [("meta-llama/Llama-3.1-8B-Instruct", 8.0), ("meta-llama/Llama-3.2-3B-Instruct", 3.2),
              ("meta-llama/Llama-3.2-1B-Instruct", 1.2), ("HuggingFaceTB/SmolLM2-360M-Instruct", 0.36)],
    "qwen2": [("Qwen/Qwen2.5-7B-Instruct", 7.6), ("Qwen/Qwen2.5-3B-Instruct", 3.1),
              ("Qwen/Qwen2.5-1.5B-Instruct", 1.5), ("Qwen/Qwen2.5-0.5B-Instruct", 0.5)],
    "qwen3": [("Qwen/Qwen3-8B", 8.2), ("Qwen/Qwen3-4B", 4.0), ("Qwen/Qwen3-1.7B", 1.7), ("Qwen/Qwen3-0.6B", 0.6)],
    "gemma2": [("google/gemma-2-9b-it", 9.2), ("google/gemma-2-2b-it", 2.6)],
    "gemma3_text": [("google/gemma-3-1b-it", 1.0), ("google/gemma-3-270m-it", 0.27)],
    "gemma3": [("google/gemma-3-4b-it", 4.3), ("google/gemma-3-1b-it", 1.0), ("google/gemma-3-270m-it", 0.27)],
    "mistral": [("mistralai/Mistral-7B-Instruct-v0.3", 7.2), ("mistralai/Ministral-8B-Instruct-2410", 8.0)],
    "phi3": [("microsoft/Phi-4-mini-instruct", 3.8), ("microsoft/Phi-3.5-mini-instruct", 3.8)],
}


@dataclass
class MemoryEstimate:
    params: int  # every parameter once (a tied head shares the embeddings)
    quantized_params: int  # weights of the linear layers bitsandbytes turns into NF4
    weights_bytes: int
    kv_bytes: int
    kv_bytes_per_token: int  # per row, all layers (sliding layers counted until their window)
    context: int
    rows: int  # sequences decoded at once (a group of personas)
    activation_bytes: int
    load_peak_bytes: int  # the largest weight in bf16, before it is quantized
    headroom_bytes: int
    quantize: bool = True

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes + self.load_peak_bytes + self.headroom_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def describe(self) -> str:
        quant = f"NF4 at {BITS_NF4} bits" if self.quantize else "bf16"
        return (f"{self.total_bytes / GB:.2f} GB: weights {self.weights_bytes / GB:.2f} GB ({self.params / 1e9:.2f}B "
                f"parameters, {quant}), KV cache {self.kv_bytes / GB:.2f} GB ({self.context} tokens x {self.rows} "
                f"row{'s' if self.rows != 1 else ''}), activations and loading {(self.activation_bytes + self.load_peak_bytes) / GB:.2f} GB, "
                f"headroom {self.headroom_bytes / GB:.2f} GB")


def _meta_model(config):
    """The model built from `config` on the meta device: shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _kv_per_token(config, context: int, width: int = BF16) -> int:
    """Bytes of keys and values one token costs in every layer (`width` bytes a value: bf16
    unless told), sliding layers capped."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    per_layer = 2 * kv_heads * head_dim * width
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None) or []
    sliding = sum(1 for t in types if t == "sliding_attention") if window else 0
    # Returned per token at full context; a sliding layer holds at most `window` tokens.
    full_tokens = (layers - sliding) * context + sliding * min(context, int(window or context))
    return per_layer * full_tokens // max(context, 1)


def estimate(config, *, context: int = 4096, rows: int = 1, quantize: bool = True, device: str = "cpu",
             width: int = BF16) -> MemoryEstimate:
    """The memory `config`'s model needs loaded in NF4 (or bf16) with `rows` x `context` tokens of KV cache;
    `width`: the bytes of each unquantized value (weights, cache, activations): 2 for bf16, 4 for fp32."""
    import torch
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = _meta_model(config)
    skip = get_keys_to_not_convert(model) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
    seen: set[int] = set()
    params = quantized = 0
    weights = 0.0
    largest = 0
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a tied head is the embedding matrix: counted once
                continue
            seen.add(id(p))
            n = p.numel()
            params += n
            if quantize and pname == "weight" and type(module) is torch.nn.Linear and should_convert_module(name, skip):
                quantized += n
                weights += n * BITS_NF4 / 8
                largest = max(largest, n * width)
            else:
                weights += n * width
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = min(int(context), int(getattr(text, "max_position_embeddings", context) or context))
    kv_token = _kv_per_token(config, context, width)
    kv = kv_token * context * rows
    # One prompt pass: a few hidden-state copies and the MLP's intermediate, plus the last
    # position's logits in fp32 per row.
    hidden, inter = int(text.hidden_size), int(getattr(text, "intermediate_size", 4 * text.hidden_size))
    acts = context * (4 * hidden + 3 * inter) * width + rows * int(text.vocab_size) * 4
    headroom = max(int(HEADROOM_FRACTION * (weights + kv)), HEADROOM_MIN.get(device, HEADROOM_MIN["cpu"]))
    return MemoryEstimate(params=params, quantized_params=quantized, weights_bytes=int(weights), kv_bytes=kv,
                          kv_bytes_per_token=kv_token, context=context, rows=rows, activation_bytes=acts,
                          load_peak_bytes=largest, headroom_bytes=headroom, quantize=quantize)


def _cgroup_free() -> int | None:
    """Memory left under this container's cgroup v2 limit, where there is one (the OOM killer's view)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def free_bytes(device: str) -> tuple[int, str]:
    """(bytes free, where) on `device`: CUDA's free memory on GPU 0, else the RAM available."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(0)
        return int(free), f"free on {torch.cuda.get_device_name(0)} (of {total / GB:.1f} GB)"
    import psutil

    vm = psutil.virtual_memory()
    free, where = int(vm.available), f"RAM available (of {vm.total / GB:.1f} GB)"
    cg = _cgroup_free()
    if cg is not None and cg < free:
        free, where = cg, "left under this container's memory limit"
    return free, where


def _suggestion(config, name: str, est: MemoryEstimate, free: int, device: str) -> str:
    """A smaller model of the same family that would fit, and a context that would."""
    hints: list[str] = []
    budget = free - est.kv_bytes - est.activation_bytes - est.headroom_bytes
    per_param = est.weights_bytes / max(est.params, 1)
    family = SMALLER.get(getattr(config, "model_type", ""), [])
    fitting = [(rid, b) for rid, b in family
               if b * 1e9 < est.params * 0.9 and b * 1e9 * per_param * 1.3 < budget and rid.lower() != name.lower()]
    if fitting:
        hints.append(f"a smaller model of the same family, e.g. --model {fitting[0][0]} (about {fitting[0][1]:g}B parameters)")
    elif family:
        smallest = family[-1]
        if smallest[1] * 1e9 < est.params * 0.9:
            hints.append(f"the family's smallest, --model {smallest[0]} (about {smallest[1]:g}B parameters)")
    # A shorter context, when the weights alone fit.
    fixed = est.weights_bytes + est.load_peak_bytes + est.headroom_bytes
    per_token = est.kv_bytes_per_token * est.rows + est.activation_bytes // max(est.context, 1)
    if fixed < free and per_token:
        tokens = int((free - fixed) / per_token) // 256 * 256
        if 512 <= tokens < est.context:  # the same model, first
            hints.insert(0, f"--context-limit {tokens} or less (now {est.context} tokens)")
    hints.append("a machine with more memory" + (" or a GPU" if device == "cpu" else ""))
    return "; ".join(hints)


def check_fits(config, name: str, *, device: str, context: int = 4096, rows: int = 1,
               quantize: bool = True, width: int = BF16) -> MemoryEstimate | None:
    """Estimate `config`'s model and raise ModelTooLarge (figures and a smaller suggestion) when
    the device has less free; returns the estimate otherwise (None when it cannot be made).
    CHORUS_MEMORY_CHECK=0 never refuses."""
    try:
        est = estimate(config, context=context, rows=rows, quantize=quantize, device=device, width=width)
    except Exception as exc:  # a config the meta build cannot take must not stop a load that may work
        log.warning("no memory estimate for %s (%s: %s); loading without the check", name, type(exc).__name__, exc)
        return None
    free, where = free_bytes(device)
    log.info("memory estimate for %s: %s; %.2f GB %s", name, est.describe(), free / GB, where)
    if est.total_bytes <= free or os.environ.get("CHORUS_MEMORY_CHECK", "").strip() == "0":
        return est
    raise ModelTooLarge(
        f"The model '{name}' needs about {est.describe()}; there are {free / GB:.2f} GB {where}. "
        f"Loading it would fail or be killed. Try {_suggestion(config, name, est, free, device)}. "
        "(CHORUS_MEMORY_CHECK=0 loads it anyway.)"
    )
