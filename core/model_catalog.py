"""Which base models the page can switch to, and which one the app starts with.

Two places hold models already on this machine: `$CHORUS_HOME/models/` (the converted
embedded model, and any folder put there) and the Hugging Face hub cache (models fetched
with `--model org/name`, or by any other tool). `cached_models` lists those that can be
loaded without a download: a config.json and safetensors weights.

The last model chosen on the page is remembered in `$CHORUS_HOME/model.json`
(`{"model": "<hub id or folder>"}`), so the next start uses it unless `--model` names
another (a remembered folder deleted since is ignored). It is written atomically, and only
after that model has loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.model_source import EMBEDDED_NAME

CHOICE_FILE = "model.json"


@dataclass(frozen=True)
class CachedModel:
    label: str  # what the picker shows
    spec: str  # what `--model` (and `resolve_model`) takes: a hub id or an absolute folder


def _loadable(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def cached_models(home: Path) -> list[CachedModel]:
    """Models that load without a download: folders under `home/models`, then hub-cache repos."""
    found: list[CachedModel] = []
    models = Path(home) / "models"
    if models.is_dir():
        for folder in sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not _loadable(folder):
                continue
            if folder.name == EMBEDDED_NAME:
                found.append(CachedModel(f"{EMBEDDED_NAME} (embedded)", EMBEDDED_NAME))
            else:
                found.append(CachedModel(f"{folder.name} ({folder})", str(folder.resolve())))
    found.extend(_hub_cached())
    return found


def _hub_cached() -> list[CachedModel]:
    """Model repos in the hub cache whose newest snapshot has a config and safetensors."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except (CacheNotFound, OSError, ValueError):
        return []  # no cache yet, or one this user cannot read: nothing to offer
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        if _loadable(Path(newest.snapshot_path)):
            out.append(CachedModel(f"{repo.repo_id} (hub cache)", repo.repo_id))
    return out


def remembered_model(home: Path) -> str | None:
    """The model last chosen on the page, or None (the embedded one). A damaged file is ignored."""
    try:
        data = json.loads((Path(home) / CHOICE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("model") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    if Path(value).is_absolute() and not Path(value).exists():
        return None  # a folder deleted since: start on the embedded model rather than fail
    return value


def remember_model(home: Path, spec: str | None) -> Path:
    """Record `spec` (None: the embedded model) as the model the next start uses; atomic."""
    path = Path(home) / CHOICE_FILE
    tmp = path.with_name(f".{CHOICE_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"model": spec or EMBEDDED_NAME}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def same_model(a: str | None, b: str | None) -> bool:
    """Do two `--model` values name the same model (the embedded one by any of its names)?"""

    def norm(spec: str | None) -> str:
        if not spec or spec in ("embedded", EMBEDDED_NAME):
            return EMBEDDED_NAME
        local = Path(spec).expanduser()
        return str(local.resolve()) if local.exists() else spec

    return norm(a) == norm(b)
