"""Files that come in through the page: adapter uploads (a zip, or peft's loose files) and
avatar images. Uploads are unpacked into a scratch folder under CHORUS_HOME and checked
there; nothing saved is touched until the engine has accepted the adapter."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from core.errors import ChorusError
from core.safezip import extract_all, open_zip

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
ADAPTER_ZIP_LIMIT = 4 * 1024**3


def scratch_dir(home: Path) -> Path:
    folder = Path(home) / "tmp" / f"upload-{uuid.uuid4().hex[:10]}"
    folder.mkdir(parents=True)
    return folder


def _names(files) -> list[Path]:
    out = []
    for f in files or []:
        path = getattr(f, "name", f)  # gr.File gives paths (str) or tempfile wrappers
        if path:
            out.append(Path(path))
    return out


def _find_adapter_folder(root: Path) -> Path:
    configs = sorted(root.rglob(CONFIG), key=lambda p: len(p.parts))
    if not configs:
        pickles = [p.name for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ChorusError(
                f"The upload holds pickle weights ({', '.join(pickles[:3])}) and no {CONFIG}. Pickle files can run "
                "code when loaded, so Chorus refuses them; upload peft's adapter_config.json and adapter_model.safetensors."
            )
        raise ChorusError(f"The upload has no {CONFIG}; an adapter needs {CONFIG} and {WEIGHTS} (peft's output folder).")
    return configs[0].parent


def prepare_adapter(files, home: Path) -> Path:
    """Turn an upload into a folder holding peft's files; the caller removes it afterwards
    with `discard`. Raises ChorusError with a plain reason."""
    paths = _names(files)
    if not paths:
        raise ChorusError("Choose the adapter's files first: a zip, or adapter_config.json and adapter_model.safetensors.")
    folder = scratch_dir(home)
    try:
        zips = [p for p in paths if p.suffix.lower() == ".zip"]
        if zips:
            if len(paths) > 1:
                raise ChorusError("Upload either one zip or the adapter's loose files, not both.")
            zf = open_zip(zips[0], what="adapter zip", max_total_bytes=ADAPTER_ZIP_LIMIT)
            with zf:
                extract_all(zf, folder, max_total_bytes=ADAPTER_ZIP_LIMIT)
            return _find_adapter_folder(folder)
        pickles = [p.name for p in paths if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not any(p.name.endswith(WEIGHTS) for p in paths):
            raise ChorusError(
                f"{', '.join(pickles)} is in pickle format, which can run code when loaded, so Chorus refuses it. "
                f"Save the adapter with peft's default safetensors format ({WEIGHTS})."
            )
        for p in paths:
            # Gradio keeps the original file name as the last part of the upload path.
            name = p.name
            if name.endswith(CONFIG):
                name = CONFIG
            elif name.endswith(WEIGHTS) or (p.suffix == ".safetensors" and len(paths) == 2):
                name = WEIGHTS
            elif p.suffix.lower() in PICKLE_SUFFIXES:
                continue
            shutil.copyfile(p, folder / name)
        return _find_adapter_folder(folder)
    except BaseException:
        discard(folder)
        raise


def discard(folder: Path | None) -> None:
    """Remove a scratch folder made by `prepare_adapter` (given it or any folder inside it)."""
    if folder is None:
        return
    folder = Path(folder)
    while folder.parent.name != "tmp" and folder.parent != folder:
        folder = folder.parent
    if folder.name.startswith("upload-"):
        shutil.rmtree(folder, ignore_errors=True)


def read_avatar(path) -> bytes | None:
    """Bytes of an uploaded avatar, shrunk to at most 256 px so the page stays light."""
    if not path:
        return None
    path = Path(getattr(path, "name", path))
    if not path.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            if max(img.size) > 256:
                img.thumbnail((256, 256))
            import io

            buf = io.BytesIO()
            img.convert("RGBA").save(buf, format="PNG")
            return buf.getvalue()
    except Exception as exc:  # a broken image is the user's to fix, not a traceback
        raise ChorusError(f"The avatar image cannot be read ({type(exc).__name__}); use a PNG, JPEG, GIF or WebP.") from None
