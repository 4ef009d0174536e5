"""`inspect`: what an export holds, for people (text) or programs (`--json`).

This is the command-line edge: domain errors become one line on stderr and exit code 2,
never a traceback. `app.py inspect` calls `inspect_command`; `python -m
core.chatimport.cli inspect FILE [--json]` does the same on its own.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import ChorusError

from .detect import FORMATS
from .loader import load_export
from .model import ImportResult


def _fmt_time(t) -> str:
    return t.isoformat(sep=" ") if t is not None else "unknown"


def render_text(result: ImportResult) -> str:
    s = result.summary()
    text_total = s["text_messages"]
    lines = [
        f"Format:        {FORMATS[result.format][0]} [{result.format}]",
        f"Conversations: {s['conversations']:,}",
        f"Messages:      {s['messages']:,} ({text_total:,} text, {s['messages'] - text_total:,} skipped)",
        f"First:         {_fmt_time(result.first)}",
        f"Last:          {_fmt_time(result.last)}",
        f"Speakers ({len(s['speakers'])}), text messages each:",
    ]
    width = max((len(n) for n in list(s["speakers"])[:50]), default=0)
    for name, n in list(s["speakers"].items())[:50]:
        lines.append(f"  {name.ljust(width)}  {n:,}")
    if len(s["speakers"]) > 50:
        lines.append(f"  ... and {len(s['speakers']) - 50} more")
    if s["skipped"]:
        lines.append("Skipped (not anyone's own words):")
        for kind, n in s["skipped"].items():
            lines.append(f"  {kind.replace('_', ' ')}: {n:,}")
    for note in s["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def inspect_command(path: str, as_json: bool) -> int:
    """Print what the export at `path` holds; 0 on success, 2 (message on stderr) if it cannot be read."""
    try:
        result = load_export(path)
    except ChorusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, but the user still gets one line, not a traceback
        print(f"error: Chorus failed to read {path!r} ({type(exc).__name__}: {exc}). Please report this.",
              file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        print(render_text(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.chatimport.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    insp = sub.add_parser("inspect", help="show what a chat export holds")
    insp.add_argument("file")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    return inspect_command(args.file, args.json)


if __name__ == "__main__":
    sys.exit(main())
