"""Tiny random-weight models of each model family Chorus supports, for tests and benchmarks.

Each is built from its family's own transformers config class with what makes the family
differ from Llama switched on at a size where it bites (docs/models.md): llama3 rope
scaling, a tied or untied head, q/k/v bias (Qwen2), q/k norms and a head_dim that is not
hidden/heads (Qwen3), attention and final-logit soft-capping, alternating sliding-window
layers and embedding scaling (Gemma 2 and 3), a sliding window (Mistral), fused qkv_proj
and gate_up_proj (Phi-3). Windows are 8 tokens, so a short prompt already runs past them.
All share SmolLM2's tokenizer and chat template (the embedded model's); 2 layers, hidden 64.
The intermediate sizes differ per family so that an adapter of one never fits another by
shape alone, and are multiples of 64: bitsandbytes' CPU inference packing needs every 4-bit
layer's input width to be a whole number of its 64-value blocks (real models' are).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

_LLAMA_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Llama 3.1's rope scaling, with the original context cut to 64 so that it acts on short prompts.
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# family -> (config class name, config fields beyond the shared ones, linear module names)
FAMILIES: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "llama3": ("LlamaConfig", dict(intermediate_size=128, tie_word_embeddings=True, rope_parameters=_LLAMA3_ROPE), _LLAMA_NAMES),
    "llama3-untied": ("LlamaConfig", dict(intermediate_size=128, tie_word_embeddings=False, rope_parameters=_LLAMA3_ROPE), _LLAMA_NAMES),
    "qwen2": (
        "Qwen2Config",
        dict(intermediate_size=192, tie_word_embeddings=True),  # q/k/v carry a bias in every Qwen2
        _LLAMA_NAMES,
    ),
    "qwen3": (
        "Qwen3Config",
        dict(intermediate_size=256, head_dim=32, tie_word_embeddings=True),  # q_proj 64 -> 128
        _LLAMA_NAMES,
    ),
    "gemma2": (
        "Gemma2Config",
        dict(intermediate_size=320, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
             attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
        _LLAMA_NAMES,
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(intermediate_size=384, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
             layer_types=["sliding_attention", "full_attention"]),
        _LLAMA_NAMES,
    ),
    "mistral": (
        "MistralConfig",
        dict(intermediate_size=448, sliding_window=8, tie_word_embeddings=False),
        _LLAMA_NAMES,
    ),
    "phi3": (
        "Phi3Config",
        dict(intermediate_size=128, tie_word_embeddings=False, original_max_position_embeddings=2048),
        ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
}


def linear_names(family: str) -> tuple[str, ...]:
    """The family's LoRA-targetable linear module names (what `add_lora` derives)."""
    return FAMILIES[family][2]


def build_tiny_family(family: str, tokenizer_dir: Path, dest: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Write a random-weight `family` model with SmolLM2's tokenizer to `dest` (bf16 safetensors)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    cls_name, extra, _ = FAMILIES[family]
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **copy.deepcopy(extra),  # a config may normalise its rope dict in place; FAMILIES stays as written
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest
