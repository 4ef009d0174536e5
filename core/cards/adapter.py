"""The adapter files a bundle carries: which are allowed, and the checks they must pass.

An adapter is peft's two files (`adapter_config.json`, `adapter_model.safetensors`) plus
Chorus's training config, training log, evaluation and `chorus_adapter.json` (the base-model
fingerprint). Weights in a pickle format (`.bin`, `.pt`...) are refused everywhere: loading
a pickle runs whatever code it holds. The safetensors header is checked here so that a
pickle renamed to `.safetensors`, or a truncated file, is caught at import, not at load.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import CardInvalid, StorageError
from core.cards.model import (
    ADAPTER_FILES,
    ADAPTER_REQUIRED,
    FINGERPRINT_KEYS,
    MAX_ADAPTER_SIDE_BYTES,
    MAX_ADAPTER_WEIGHTS_BYTES,
    PICKLE_EXTS,
)
from core.cards.safejson import loads_bounded

WEIGHTS = "adapter_model.safetensors"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own cap on the JSON header


def max_bytes(name: str) -> int:
    return MAX_ADAPTER_WEIGHTS_BYTES if name == WEIGHTS else MAX_ADAPTER_SIDE_BYTES[name]


def is_pickle_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in PICKLE_EXTS


def pickle_refusal(name: str) -> CardInvalid:
    return CardInvalid(
        f"The adapter weights are in a pickle file ({PurePosixPath(name).name}). Pickle files can run code "
        "when loaded, so Chorus refuses them and nothing was imported. Convert the adapter to "
        "adapter_model.safetensors (peft: save_pretrained(..., safe_serialization=True)) and export again."
    )


def check_safetensors(data: bytes) -> None:
    """Refuse anything that is not a well-formed safetensors file."""
    if data[:1] == b"\x80" or data[:2] == b"PK":
        # Pickle protocol 2+ starts with 0x80; torch.save writes a zip of pickles.
        raise pickle_refusal("adapter_model.safetensors (a pickle inside)")
    bad = CardInvalid(
        "The adapter's adapter_model.safetensors is damaged or not a safetensors file; nothing was imported. "
        "Export the persona again."
    )
    if len(data) < 8:
        raise bad
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_SAFETENSORS_HEADER):
        raise bad
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    body = len(data) - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise bad


def _json_object(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    obj = loads_bounded(files[name], f"adapter's {name}")
    if not isinstance(obj, dict):
        raise CardInvalid(f"The adapter's {name} is not a JSON object; nothing was imported. Export the persona again.")
    return obj


def fingerprint(files: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The base-model fingerprint from `chorus_adapter.json`, None if it is missing or says nothing."""
    if "chorus_adapter.json" not in files:
        return None
    obj = _json_object(files, "chorus_adapter.json")
    meta = {k: obj.get(k) for k in FINGERPRINT_KEYS}
    return meta if meta.get("base_model") or meta.get("base_fingerprint") else None


def validate(files: Mapping[str, bytes]) -> None:
    """Check an adapter file set: no pickles, the required files present, sizes bounded, JSON sound."""
    for name in files:
        if is_pickle_name(name):
            raise pickle_refusal(name)
    missing = [n for n in ADAPTER_REQUIRED if n not in files]
    if missing:
        raise CardInvalid(
            f"The adapter is incomplete: {', '.join(missing)} missing. Nothing was imported; export the persona again."
        )
    for name, data in files.items():
        if name not in ADAPTER_FILES:
            raise CardInvalid(f"The adapter has an unexpected file {name!r}; Chorus does not know what it is.")
        if len(data) > max_bytes(name):
            raise CardInvalid(
                f"The adapter's {name} is {len(data) / 1024**2:,.0f} MB, over the {max_bytes(name) / 1024**2:,.0f} MB limit."
            )
    _json_object(files, "adapter_config.json")
    for name in ("training_config.json",):
        if name in files:
            _json_object(files, name)
    check_safetensors(files[WEIGHTS])


def collect(adapter: str | Path | Mapping[str, bytes] | None) -> dict[str, bytes]:
    """The adapter files from a folder or a name->bytes mapping; only the known names are taken.

    A folder may hold other things (README, checkpoints); they are left behind. Weights saved
    only as pickle (`adapter_model.bin` and no safetensors) are refused.
    """
    if adapter is None:
        return {}
    if isinstance(adapter, Mapping):
        names = list(adapter)
        files = {n: bytes(adapter[n]) for n in names if n in ADAPTER_FILES}
    else:
        folder = Path(adapter)
        if not folder.is_dir():
            raise CardInvalid(f"The adapter folder {folder} does not exist; the persona has no trained adapter there.")
        names = [p.name for p in folder.iterdir() if p.is_file()]
        files = {}
        for name in ADAPTER_FILES:
            path = folder / name
            if path.is_file():
                if path.stat().st_size > max_bytes(name):
                    raise CardInvalid(f"The adapter's {name} is larger than {max_bytes(name) / 1024**2:,.0f} MB.")
                files[name] = path.read_bytes()
    if WEIGHTS not in files:
        pickled = [n for n in names if n.startswith("adapter_model") and is_pickle_name(n)]
        if pickled:
            raise pickle_refusal(pickled[0])
    return files


def save_files(files: Mapping[str, bytes], dest: str | Path) -> Path:
    """Write an imported adapter into the folder `dest`: a temp folder beside it, then a rename.

    An existing `dest` is replaced only once the new folder is complete, so a crash leaves
    either the old adapter or the new one, never a mix.
    """
    validate(files)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            old = None
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('.', 1)[-1]}")
                dest.rename(old)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise StorageError(f"Cannot write the adapter to {dest}: {exc.strerror or exc}.") from None
    return dest
