"""Loading the base model once, in 4-bit NF4, and describing what was loaded.

NF4 with double quantization and bf16 compute through bitsandbytes, on CUDA when there is
one (device_map) and on the CPU otherwise. The fingerprint names the architecture an
adapter must have been trained on: two configs with the same shapes share it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.device import pick_device
from core.errors import ModelUnavailable
from core.model_source import ModelSource

# The config fields that decide whether an adapter's weights mean the same thing here.
_FINGERPRINT_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
)


# Fields that change what the weights compute in some families (Gemma's soft-capping and
# query scale, sliding windows, Qwen2's q/k/v bias, llama3 rope scaling...). Each counts
# only where it differs from the Llama value in the second column, so a Llama's
# fingerprint (and every adapter recorded with one) is what it was before they counted.
_FAMILY_KEYS = (
    ("attn_logit_softcapping", None),
    ("final_logit_softcapping", None),
    ("query_pre_attn_scalar", None),
    ("sliding_window", None),
    ("attention_bias", False),
    ("mlp_bias", False),
    ("hidden_act", "silu"),
    ("hidden_activation", None),
    ("partial_rotary_factor", 1.0),
)


def _family_fields(d: dict) -> dict:
    """The family-specific fields of config dict `d` that differ from a plain Llama's."""
    picked = {k: d[k] for k, plain in _FAMILY_KEYS if d.get(k) is not None and d[k] != plain}
    if d.get("sliding_window") and d.get("use_sliding_window") is False:
        picked.pop("sliding_window", None)  # Qwen keeps a window size it does not use
    layer_types = d.get("layer_types") or ()
    if any(t != "full_attention" for t in layer_types):
        picked["layer_types"] = list(layer_types)
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if isinstance(rope, dict) and (set(rope) - {"rope_type", "rope_theta"} or rope.get("rope_type", "default") != "default"):
        picked["rope"] = rope  # scaled rope (llama3, yarn, per layer type): positions mean another thing
    return picked


def config_fingerprint(config) -> str:
    """A short, stable hash of the shape-defining config fields, and of the fields by which
    families differ in what the same shapes compute (`_FAMILY_KEYS`)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    picked = {k: d.get(k) for k in _FINGERPRINT_KEYS}
    picked["rope_theta"] = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta")
    picked.update(_family_fields(d))
    blob = json.dumps(picked, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class ModelInfo:
    name: str
    path: str
    architecture: str
    model_type: str
    fingerprint: str
    vocab_size: int
    context_length: int
    quantization: str
    device: str
    footprint_mb: float
    load_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _short(dtype) -> str:
    return {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(str(dtype).removeprefix("torch."), str(dtype))


def nf4_config(compute_dtype=None):
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
    )


def load_base(source: ModelSource, *, quantize: bool = True, device: str | None = None, context_limit: int | None = None,
              dtype=None):
    """Load `source` in NF4 (or bf16 with quantize=False), after checking that it fits with
    `context_limit` tokens of KV cache (4096 if None). `dtype` (default bf16) is what the
    weights that stay unquantized and the 4-bit matmuls compute in (training picks fp32 on
    CPUs without fast bf16: core.device.training_dtype). Returns (model, tokenizer, ModelInfo)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or pick_device()
    dtype = dtype or torch.bfloat16
    t0 = time.perf_counter()
    kwargs = {"dtype": dtype, "device_map": {"": 0} if device == "cuda" else "cpu"}
    if quantize:
        kwargs["quantization_config"] = nf4_config(dtype)
    try:
        # Refuse a model that would not fit before loading it (core/memory_fit.py).
        from core.memory_fit import check_fits
        from transformers import AutoConfig

        check_fits(AutoConfig.from_pretrained(str(source.path)), source.name, device=device,
                   context=context_limit or 4096, quantize=quantize, width=dtype.itemsize)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        model = AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Could not load the model '{source.name}' from {source.path}: {exc}") from None
    model.eval()
    if quantize:  # the few bf16 weights left in the file's map would keep all of it resident
        from core.file_backed import own_file_backed_weights

        own_file_backed_weights(model)
    from core.engine import attention

    attention.use(model)  # one-token steps on the CPU: fp32 matmuls instead of the flash kernel
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = model.config
    info = ModelInfo(
        name=source.name,
        path=str(source.path),
        architecture=(cfg.architectures or [type(model).__name__])[0],
        model_type=cfg.model_type,
        fingerprint=config_fingerprint(cfg),
        vocab_size=int(cfg.vocab_size),
        context_length=int(getattr(cfg, "max_position_embeddings", 2048) or 2048),
        quantization=f"NF4 4-bit (double quant, {_short(dtype)} compute)" if quantize else _short(dtype),
        device=device,
        footprint_mb=round(model.get_memory_footprint() / 1e6, 1),
        load_s=round(time.perf_counter() - t0, 2),
    )
    return model, tokenizer, info


def model_name_matches(recorded: str | None, name: str) -> bool:
    """Adapters record their base as a hub id or a folder; compare the last path part."""
    if not recorded:
        return True
    return Path(str(recorded).rstrip("/")).name.lower() == Path(name.rstrip("/")).name.lower()
