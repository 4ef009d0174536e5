"""Small synthetic models and adapters, for tests and benchmarks that cannot download.

`build_tiny_llama` writes a random-weight Llama that shares the embedded model's tokenizer
and chat template; `make_random_adapter` writes a peft LoRA adapter with non-zero weights
(so it visibly changes the output) and Chorus's metadata for the given base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.loader import config_fingerprint
from storage.adapter_files import META

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def build_tiny_llama(tokenizer_dir: Path, dest: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def make_random_adapter(
    base_dir: Path,
    dest: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: float = 16,
    targets: list[str] | None = None,
    scale: float = 1.0,
    base_name: str | None = None,
) -> Path:
    """A LoRA adapter with random A and B for the model in `base_dir` (loaded unquantized)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, dest = Path(base_dir), Path(dest)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or ALL_LINEAR, lora_dropout=0.0, init_lora_weights=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, scale / (param.shape[-1] ** 0.5))
    peft_model.save_pretrained(str(dest), safe_serialization=True)
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name or base_dir.name
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (dest / META).write_text(
        json.dumps(
            {
                "base_model": base_name or base_dir.name,
                "base_fingerprint": config_fingerprint(model.config),
                "architecture": (model.config.architectures or ["LlamaForCausalLM"])[0],
                "vocab_size": model.config.vocab_size,
            },
            indent=2,
        )
    )
    return dest
