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


def config_fingerprint(config) -> str:
    """A short, stable hash of the shape-defining config fields."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    picked = {k: d.get(k) for k in _FINGERPRINT_KEYS}
    picked["rope_theta"] = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta")
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


def nf4_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(source: ModelSource, *, quantize: bool = True, device: str | None = None):
    """Load `source` in NF4 (or bf16 with quantize=False). Returns (model, tokenizer, ModelInfo)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or pick_device()
    t0 = time.perf_counter()
    kwargs = {"dtype": torch.bfloat16, "device_map": {"": 0} if device == "cuda" else "cpu"}
    if quantize:
        kwargs["quantization_config"] = nf4_config()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        model = AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Could not load the model '{source.name}' from {source.path}: {exc}") from None
    model.eval()
    from core import attention

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
        quantization="NF4 4-bit (double quant, bf16 compute)" if quantize else "bf16",
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
