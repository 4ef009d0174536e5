"""Reading and checking a LoRA adapter folder before any of it touches the model.

An adapter is accepted only if it is peft LoRA in safetensors, made for this base model
(name and config fingerprint when it records them), and every tensor names a module the
base model has, with the shapes that module needs. Anything else raises
`AdapterIncompatible` or `AdapterCorrupt` saying what does not match; nothing is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import AdapterCorrupt, AdapterIncompatible
from core.loader import ModelInfo, model_name_matches
from storage.adapter_files import CONFIG, META, WEIGHTS, sha256_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_RANK = 1024
# peft saves `base_model.model.<module>.lora_A.weight` (the adapter name stripped);
# embedding LoRA is saved as bare parameters `<module>.lora_embedding_A`.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B)\.weight$"
    r"|^(?:base_model\.model\.)?(?P<module2>.+?)\.(?P<kind2>lora_embedding_A|lora_embedding_B)$"
)


def parse_key(key: str) -> tuple[str, str] | None:
    """(module path, lora kind) of a saved peft tensor name, or None if it is not LoRA."""
    m = _KEY.match(key)
    if not m:
        return None
    return (m.group("module") or m.group("module2"), m.group("kind") or m.group("kind2"))


@dataclass
class AdapterSpec:
    folder: Path
    config: dict
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    base_fingerprint: str
    size_bytes: int
    sha256: str
    meta: dict = field(default_factory=dict)

    def store_meta(self) -> dict:
        return {
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
        }


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterIncompatible(f"The adapter's {what} ({path.name}) cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise AdapterIncompatible(f"The adapter's {what} ({path.name}) is not a JSON object.")
    return data


class DigestCache:
    """sha256 digests of weights files, remembered per (path, size, mtime, ctime, inode) so
    that reloading an evicted adapter does not hash 20 MB again. A replaced file changes the
    inode; a write in place changes the ctime even when the writer sets the size and mtime
    back (`utime` cannot set the ctime). Safe to share between threads: every read and write
    of the table holds its own small lock."""

    def __init__(self, limit: int = 256):
        import threading

        self._lock = threading.Lock()
        self._digests: dict = {}
        self._limit = limit

    @staticmethod
    def key(path: Path) -> tuple:
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def get(self, key: tuple) -> str | None:
        with self._lock:
            return self._digests.get(key)

    def put(self, key: tuple, digest: str) -> None:
        with self._lock:
            if len(self._digests) >= self._limit:
                self._digests.clear()
            self._digests[key] = digest


def _sha256(path: Path, cache: DigestCache | None) -> str:
    """sha256 of a file, from `cache` when its key (size, mtime, inode) is unchanged."""
    if cache is None:
        return sha256_file(path)
    key = cache.key(path)
    digest = cache.get(key)
    if digest is None:
        digest = sha256_file(path)  # outside the cache's lock: hashing takes a while
        cache.put(key, digest)
    return digest


def inspect_adapter(folder: Path, expected_sha256: str | None = None, sha_cache: DigestCache | None = None) -> AdapterSpec:
    """Read an adapter folder's config and metadata; check the file format and checksum."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterIncompatible(f"The adapter folder {folder} does not exist.")
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise AdapterIncompatible(
                f"The adapter's weights are in pickle format ({', '.join(pickles)}), which can run code when loaded, "
                "so Chorus refuses them. Convert them to adapter_model.safetensors (peft saves that by default)."
            )
        raise AdapterIncompatible(f"The adapter has no {WEIGHTS}; a peft LoRA adapter folder needs {CONFIG} and {WEIGHTS}.")
    if not (folder / CONFIG).is_file():
        raise AdapterIncompatible(f"The adapter has no {CONFIG}; a peft LoRA adapter folder needs {CONFIG} and {WEIGHTS}.")
    config = _read_json(folder / CONFIG, "config")
    meta = _read_json(folder / META, "metadata") if (folder / META).is_file() else {}
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterIncompatible(f"The adapter is of type '{peft_type or 'unknown'}'; Chorus serves LoRA adapters only.")
    if config.get("use_dora"):
        raise AdapterIncompatible("The adapter is a DoRA adapter; Chorus serves plain LoRA adapters only.")
    if config.get("modules_to_save"):
        raise AdapterIncompatible(
            f"The adapter replaces whole modules ({config['modules_to_save']}); Chorus serves LoRA-only adapters."
        )
    for key in ("r", "target_modules"):
        if key not in config:
            raise AdapterIncompatible(f"The adapter's config lacks the key '{key}'.")
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
    except (TypeError, ValueError):
        raise AdapterIncompatible("The adapter's rank (r) or lora_alpha is not a number.") from None
    if not 1 <= rank <= MAX_RANK:
        raise AdapterIncompatible(f"The adapter's rank {rank} is out of range (1..{MAX_RANK}).")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    sha = _sha256(weights, sha_cache)
    if expected_sha256 and sha != expected_sha256:
        raise AdapterCorrupt(
            f"The adapter file {weights} does not match its recorded checksum: it was changed or damaged on disk. "
            "Attach the adapter again or restore it from a backup."
        )
    return AdapterSpec(
        folder=folder,
        config=config,
        rank=rank,
        alpha=alpha,
        target_modules=targets,
        base_model=str(meta.get("base_model") or config.get("base_model_name_or_path") or ""),
        base_fingerprint=str(meta.get("base_fingerprint") or ""),
        size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        sha256=sha,
        meta=meta,
    )


def module_shapes(model) -> dict[str, tuple[int, int, str]]:
    """(in, out, kind) of every Linear/Embedding under the base model, by dotted name."""
    shapes = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None) or module
        if hasattr(base, "in_features") and hasattr(base, "out_features"):
            shapes[name] = (int(base.in_features), int(base.out_features), "linear")
        elif hasattr(base, "num_embeddings") and hasattr(base, "embedding_dim"):
            shapes[name] = (int(base.num_embeddings), int(base.embedding_dim), "embedding")
    return shapes


def check_compatible(spec: AdapterSpec, shapes: dict, info: ModelInfo) -> dict:
    """Check `spec` against the base model's module `shapes` (from `module_shapes`, taken
    before any adapter was injected); return its tensors (CPU) if it fits."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_base(spec, info)
    if spec.target_modules not in (["all-linear"],):
        for target in spec.target_modules:
            if len(spec.target_modules) == 1 and any(c in target for c in "^$*|()[]\\"):
                if not any(re.fullmatch(target, n) for n in shapes):
                    raise AdapterIncompatible(f"The adapter's target pattern '{target}' matches no module of '{info.name}'.")
            elif not any(n == target or n.endswith("." + target) for n in shapes):
                raise AdapterIncompatible(
                    f"The adapter targets the module '{target}', which '{info.name}' ({info.architecture}) does not have."
                )
    return _checked_tensors(spec, shapes, info, load_file, SafetensorError)


def check_base(spec: AdapterSpec, info: ModelInfo) -> None:
    """The checks that need only the base model's description, not its modules: the base
    it was made for (fingerprint and name), its architecture and vocabulary size."""
    if spec.base_fingerprint and spec.base_fingerprint != info.fingerprint:
        raise AdapterIncompatible(
            f"The adapter was trained on a different base model ('{spec.base_model or 'unknown'}', fingerprint "
            f"{spec.base_fingerprint}) than the one running ('{info.name}', fingerprint {info.fingerprint})."
        )
    if spec.base_model and not model_name_matches(spec.base_model, info.name):
        raise AdapterIncompatible(
            f"The adapter was made for the base model '{spec.base_model}', but Chorus is running '{info.name}'. "
            f"Start Chorus with --model {spec.base_model} to use it."
        )
    for key, have in (("architecture", info.architecture), ("vocab_size", info.vocab_size)):
        want = spec.meta.get(key)
        if want is not None and str(want) != str(have):
            raise AdapterIncompatible(f"The adapter expects {key} {want}, but the running model has {have}.")


def _checked_tensors(spec: AdapterSpec, shapes: dict, info: ModelInfo, load_file, SafetensorError) -> dict:
    """The adapter's tensors, each checked against the module it is for."""
    try:
        tensors = load_file(str(spec.folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterCorrupt(f"The adapter's weights file cannot be read (truncated or damaged?): {exc}.") from None
    if not tensors:
        raise AdapterIncompatible("The adapter's weights file holds no tensors.")
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise AdapterIncompatible(f"The adapter tensor '{key}' is not floating point ({tensor.dtype}).")
        parsed = parse_key(key)
        if parsed is None:
            vocab_hint = ""
            if tensor.ndim == 2 and ("embed" in key or "lm_head" in key) and tensor.shape[0] != info.vocab_size:
                vocab_hint = f" (vocabulary size {tensor.shape[0]}, the running model has {info.vocab_size})"
            raise AdapterIncompatible(f"The adapter holds a tensor Chorus cannot place: '{key}'{vocab_hint}.")
        module, kind = parsed
        if module not in shapes:
            raise AdapterIncompatible(f"The adapter has weights for '{module}', which '{info.name}' does not have.")
        fan_in, fan_out, mkind = shapes[module]
        if mkind == "embedding":
            expected = (rank_of(spec, module), fan_in) if kind == "lora_embedding_A" else (fan_out, rank_of(spec, module))
            what = "vocabulary size" if kind == "lora_embedding_A" else "embedding width"
        else:
            expected = (rank_of(spec, module), fan_in) if kind == "lora_A" else (fan_out, rank_of(spec, module))
            what = "shape"
        if tuple(tensor.shape) != expected:
            raise AdapterIncompatible(
                f"The adapter tensor '{key}' has shape {tuple(tensor.shape)}, but '{info.name}' needs {expected} "
                f"({what} mismatch): it was made for another model."
            )
    return tensors


def rank_of(spec: AdapterSpec, module: str) -> int:
    """peft allows per-module ranks (rank_pattern); honour them when checking shapes."""
    for pattern, r in (spec.config.get("rank_pattern") or {}).items():
        if re.search(pattern, module):
            return int(r)
    return spec.rank
