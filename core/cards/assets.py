"""Sorting a V3 card's `data.assets`: which entry is the main icon, which are Chorus adapter
files, which Chorus keeps for export, and which it cannot carry (embedded files it does not use).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

ADAPTER_ASSET_TYPE = "x_chorus_adapter"  # V3: application asset types start with x_
EMBEDDED_PREFIXES = ("embeded://", "embedded://")  # the spec's spelling, and the obvious typo


@dataclass
class Triage:
    main_icon: dict[str, Any] | None = None
    adapter: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)  # URLs Chorus keeps verbatim for export
    skipped: list[dict[str, Any]] = field(default_factory=list)  # files inside the container, not carried


def embedded_path(uri: Any) -> str | None:
    if isinstance(uri, str):
        for prefix in EMBEDDED_PREFIXES:
            if uri.startswith(prefix):
                return uri[len(prefix) :]
    return None


def data_url_bytes(uri: Any) -> bytes | None:
    """The bytes of a base64 `data:` URL, None for anything else or a broken one."""
    if not isinstance(uri, str) or not uri.startswith("data:") or ";base64," not in uri[:100]:
        return None
    try:
        return base64.b64decode(uri.split(",", 1)[1], validate=False)
    except (binascii.Error, ValueError):
        return None


def triage(assets: list[dict[str, Any]]) -> Triage:
    """Split assets. The main icon is the icon named `main`, else the first icon (V3 spec)."""
    out = Triage()
    icons = [a for a in assets if a.get("type") == "icon"]
    out.main_icon = next((a for a in icons if a.get("name") == "main"), icons[0] if icons else None)
    for asset in assets:
        if asset is out.main_icon:
            continue
        uri = asset.get("uri")
        if asset.get("type") == ADAPTER_ASSET_TYPE:
            out.adapter.append(asset)
        elif embedded_path(uri) is not None or (isinstance(uri, str) and uri.startswith("__asset:")):
            out.skipped.append(asset)
        else:
            out.kept.append(asset)
    return out


def skipped_warning(skipped: list[dict[str, Any]]) -> str | None:
    if not skipped:
        return None
    kinds = sorted({str(a.get("type") or "other") for a in skipped})
    return (
        f"{len(skipped)} embedded asset(s) of the card ({', '.join(kinds)}) were not imported: "
        "Chorus keeps only the main icon, so exporting this persona will not include them."
    )
