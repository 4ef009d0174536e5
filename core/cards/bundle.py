"""Persona bundles: CHARX-style zips holding a V3 card, its avatar and its LoRA adapter.

Layout written (CHARX, V3 spec; the adapter is an application asset type, `x_`-prefixed):

    card.json                                        V3 card; data.assets lists the files below
    assets/icon/images/main.png                      avatar (type icon, name main)
    assets/x_chorus_adapter/ai/adapter_model.safetensors
    assets/x_chorus_adapter/other/adapter_config.json   (and training_config.json,
                                                     chorus_adapter.json, training_log.jsonl, evaluation.json)

`data.extensions.chorus` = {"bundle_version": 1, "adapter": {fingerprint..., "files": [...]}}
or {"bundle_version": 1, "adapter": null}. Reading accepts any CHARX (RisuAI, SillyTavern):
`card.json` at the root (or inside one top folder, for re-zipped folders), `__MACOSX/` junk
ignored, every zip vetted by `core.safezip` and every read bounded.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from core.errors import CardInvalid, UnsafeArchive
from core.safezip import open_zip, read_member
from core.cards import adapter as adapter_files
from core.cards.assets import ADAPTER_ASSET_TYPE, data_url_bytes, embedded_path, skipped_warning, triage
from core.cards.fileio import atomic_output
from core.cards.model import (
    ADAPTER_FILES,
    FINGERPRINT_KEYS,
    MAX_BUNDLE_BYTES,
    MAX_CARD_JSON_BYTES,
    MAX_PNG_BYTES,
    Card,
    CardImport,
)
from core.cards.png import image_to_png
from core.cards.safejson import loads_bounded
from core.cards.spec import card_to_v3_dict, dump_json, keep_assets, parse_card_obj

BUNDLE_VERSION = 1
ICON_PATH = "assets/icon/images/main.png"
ADAPTER_DIR = f"assets/{ADAPTER_ASSET_TYPE}"


def _adapter_path(name: str) -> str:
    return f"{ADAPTER_DIR}/{'ai' if name.endswith('.safetensors') else 'other'}/{name}"


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return not parts or parts[0] == "__MACOSX" or parts[-1] in (".DS_Store", "Thumbs.db") or parts[-1].startswith("._")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """`read_member`, with zipfile's own failures (bad CRC, encryption...) turned into user errors."""
    try:
        return read_member(zf, info, max_bytes)
    except UnsafeArchive:
        raise
    except RuntimeError:  # zipfile raises RuntimeError for encrypted entries
        raise UnsafeArchive(f"The bundle entry {info.filename!r} is encrypted; Chorus cannot read it.") from None
    except NotImplementedError:
        raise UnsafeArchive(
            f"The bundle entry {info.filename!r} uses a compression method Chorus cannot read; re-zip it with deflate."
        ) from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise UnsafeArchive(f"The bundle entry {info.filename!r} is damaged ({exc}); nothing was imported.") from None


def _card_json_prefix(members: Mapping[str, zipfile.ZipInfo]) -> str:
    if "card.json" in members:
        return ""
    nested = [n for n in members if n.count("/") == 1 and n.endswith("/card.json")]
    if len(nested) == 1:
        return nested[0][: -len("card.json")]
    raise CardInvalid(
        "This zip is not a character bundle: it has no card.json at its root. "
        "Import a .charx file or a bundle exported by Chorus."
    )


def read_bundle(source: str | Path | IO[bytes], *, fallback_name: str | None = None) -> CardImport:
    """Read a CHARX file or Chorus bundle. Raises before returning anything if any part is unsafe."""
    zf = open_zip(source, what="character bundle", max_total_bytes=MAX_BUNDLE_BYTES)
    with zf:
        members = {i.filename: i for i in zf.infolist() if not i.is_dir() and not _is_junk(i.filename)}
        prefix = _card_json_prefix(members)
        raw = _read(zf, members[prefix + "card.json"], MAX_CARD_JSON_BYTES)
        parsed = parse_card_obj(loads_bounded(raw, "bundle's card.json"), fallback_name=fallback_name)
        card, warnings = parsed.card, list(parsed.warnings)
        sorted_assets = triage(parsed.assets)

        def member(uri: Any) -> zipfile.ZipInfo | None:
            path = embedded_path(uri)
            return members.get(prefix + path) if path is not None else None

        # The avatar: the main icon, from the zip or a data: URL.
        icon = sorted_assets.main_icon
        if icon is not None:
            uri = icon.get("uri")
            blob = None
            if (info := member(uri)) is not None:
                blob = _read(zf, info, MAX_PNG_BYTES)
            elif (decoded := data_url_bytes(uri)) is not None:
                blob = decoded
            elif isinstance(uri, str) and uri.startswith(("http://", "https://")):
                warnings.append(f"The card's icon is a web link ({uri[:80]}); Chorus does not download it, so it has no avatar.")
            elif embedded_path(uri) is not None:
                warnings.append("The card's icon is listed but missing from the bundle; it was imported without an avatar.")
            if blob is not None:
                card.avatar = image_to_png(blob)
                if card.avatar is None:
                    warnings.append("The card's icon is not an image Chorus can read; it was imported without an avatar.")

        files, meta = _read_adapter(zf, members, prefix, sorted_assets.adapter, parsed.chorus, warnings, member)
        keep_assets(card, sorted_assets.kept)
        if (note := skipped_warning(sorted_assets.skipped)) is not None:
            warnings.append(note)
    result = CardImport(card=card, adapter_files=files, warnings=warnings, source_format="charx", adapter_meta=meta)
    return result


def _read_adapter(zf, members, prefix, assets, chorus, warnings, member) -> tuple[dict[str, bytes], dict | None]:
    # Pickle weights anywhere in the adapter folder refuse the whole bundle, listed or not:
    # the bundle was not made by Chorus, or was tampered with.
    for name in members:
        if name.startswith(prefix + ADAPTER_DIR + "/") and adapter_files.is_pickle_name(name):
            raise adapter_files.pickle_refusal(name)
    for asset in assets:
        for label in (str(asset.get("name") or ""), str(embedded_path(asset.get("uri")) or "")):
            if adapter_files.is_pickle_name(label):
                raise adapter_files.pickle_refusal(label)
    declared = isinstance(chorus, dict) and isinstance(chorus.get("adapter"), dict)
    if not assets:
        if declared:
            warnings.append("The bundle says it holds an adapter but its files are missing; the card was imported without one.")
        return {}, None

    files: dict[str, bytes] = {}
    for asset in assets:
        name = asset.get("name")
        if name not in ADAPTER_FILES:
            warnings.append(f"The bundle lists an unknown adapter file {name!r}; it was left out.")
            continue
        info = member(asset.get("uri"))
        if info is None:
            raise CardInvalid(
                f"The bundle's adapter is incomplete: {name} is listed but missing. Nothing was imported; "
                "export the persona again."
            )
        files[name] = _read(zf, info, adapter_files.max_bytes(name))
    adapter_files.validate(files)

    meta = adapter_files.fingerprint(files)
    if meta is None and declared:
        candidate = {k: chorus["adapter"].get(k) for k in FINGERPRINT_KEYS}
        meta = candidate if candidate.get("base_model") or candidate.get("base_fingerprint") else None
    if meta is None:
        warnings.append(
            "The bundle's adapter does not say which base model it was trained on, so Chorus cannot tell whether "
            "it fits; the card was imported without it. Train the persona again here."
        )
        return {}, None
    return files, meta


def write_bundle(
    card: Card, adapter: str | Path | Mapping[str, bytes] | None, out_path: str | Path
) -> Path:
    """Write `card` (and its adapter, from a folder or name->bytes, or None) as a bundle zip, atomically.

    The adapter must be complete: peft's two files and `chorus_adapter.json` with the
    base-model fingerprint; without the fingerprint another machine could not check it.
    """
    files = adapter_files.collect(adapter)
    assets: list[dict[str, Any]] = []
    entries: list[tuple[str, bytes, int]] = []  # (path in zip, bytes, compression)
    chorus: dict[str, Any] = {"bundle_version": BUNDLE_VERSION, "adapter": None}
    if files:
        adapter_files.validate(files)
        meta = adapter_files.fingerprint(files)
        if meta is None:
            raise CardInvalid(
                "The adapter has no chorus_adapter.json naming its base model, so a bundle could not be checked "
                "on another machine. Train or save the adapter again with Chorus."
            )
        chorus["adapter"] = {**meta, "files": [n for n in ADAPTER_FILES if n in files]}
        for name in ADAPTER_FILES:
            if name in files:
                path = _adapter_path(name)
                ext = PurePosixPath(name).suffix.lstrip(".")
                assets.append({"type": ADAPTER_ASSET_TYPE, "uri": f"embeded://{path}", "name": name, "ext": ext})
                # Weights barely compress; storing them keeps export fast and the ratio check honest.
                method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
                entries.append((path, files[name], method))
    if card.avatar:
        png = image_to_png(card.avatar)
        if png is None:
            raise CardInvalid("The persona's avatar is not an image Chorus can read; choose another and export again.")
        assets.insert(0, {"type": "icon", "uri": f"embeded://{ICON_PATH}", "name": "main", "ext": "png"})
        entries.insert(0, (ICON_PATH, png, zipfile.ZIP_STORED))
    card_json = dump_json(card_to_v3_dict(card, assets=assets, chorus=chorus))

    out_path = Path(out_path)
    with atomic_output(out_path) as fh:
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr("card.json", card_json, compress_type=zipfile.ZIP_DEFLATED)
            for path, data, method in entries:
                zf.writestr(path, data, compress_type=method)
    return out_path


def read_bundle_bytes(data: bytes, *, fallback_name: str | None = None) -> CardImport:
    return read_bundle(io.BytesIO(data), fallback_name=fallback_name)
