"""Run one upload entry point on one file in a fresh process and print what happened as
JSON (error class, message, seconds, peak memory), so a test can bound memory per file.

    python -m tests.reliability.upload_probe export|card|adapter FILE HOME
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def run(kind: str, path: str, home: str):
    if kind == "export":
        from core.chatimport import load_export

        return load_export(path)
    if kind == "card":
        from core.persona_cards import import_card
        from storage.store import Store

        return import_card(Store(Path(home)), path)
    from ui.uploads import discard, prepare_adapter

    folder = prepare_adapter([path], Path(home))
    discard(folder)
    return folder


def _peak_kb() -> int:
    """This process's peak RSS (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    # Linux copies the parent's peak RSS into a child (and ru_maxrss keeps it across exec),
    # so a probe started by a big pytest process would report the parent's peak. Writing 5
    # to clear_refs resets VmHWM to the current RSS.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main(kind: str, path: str, home: str) -> None:
    import core.chatimport, storage.store, ui.uploads  # noqa: F401,E401  (imports are not the upload's cost)

    _reset_peak()
    base = _peak_kb()
    t0 = time.perf_counter()
    try:
        run(kind, path, home)
        out = {"error": None, "message": ""}
    except Exception as exc:
        out = {"error": type(exc).__name__, "chorus": exc.__class__.__module__.startswith(("core", "storage")), "message": str(exc)}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    peak = _peak_kb()
    out["peak_mb"] = peak // 1024
    out["growth_mb"] = (peak - base) // 1024  # over what the imports took
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
