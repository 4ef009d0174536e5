"""`inspect`: what an export holds, for people (text) or programs (`--json`).

This is the command-line edge: domain errors become one line on stderr and exit code 2,
never a traceback. `app.py inspect` calls `inspect_command`; `python -m
core.chatimport.cli inspect FILE [--json] [--sample SPEAKER [N]] [--keep BODY]` does the
same on its own. `--sample` prints, instead of the summary, N turns that would be
trained for that speaker; `--keep` keeps a body the repetition guard set aside.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import ChorusError

from .detect import FORMATS
from .loader import load_export
from .model import ImportResult
from .sample import DEFAULT_N, render_sample, sample_turns


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
    if s["placeholders"]:
        lines.append("Placeholders among them: " + ", ".join(f"{k.replace('_', ' ')} {n:,}" for k, n in s["placeholders"].items()))
    for note in s["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def parse_sample(values: list[str] | None) -> tuple[str, int] | None:
    """`--sample SPEAKER [N]` as (speaker, n); a ChorusError for a bad N."""
    if not values:
        return None
    if len(values) > 2 or (len(values) == 2 and not values[1].isdigit()):
        raise ChorusError("--sample takes a speaker name and optionally how many turns, e.g. --sample Ana 10 "
                          "(quote a name with spaces).")
    return values[0], int(values[1]) if len(values) == 2 else DEFAULT_N


def inspect_command(path: str, as_json: bool, sample: list[str] | None = None, keep: list[str] | None = None) -> int:
    """Print what the export at `path` holds (or, with `sample`, what would be trained for one
    speaker); 0 on success, 2 (message on stderr) if it cannot be read."""
    try:
        wanted = parse_sample(sample)
        result = load_export(path, keep=keep or ())
        picked = sample_turns(result, *wanted) if wanted else None
    except ChorusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, but the user still gets one line, not a traceback
        print(f"error: Chorus failed to read {path!r} ({type(exc).__name__}: {exc}). Please report this.",
              file=sys.stderr)
        return 2
    if picked is not None:
        print(json.dumps(picked, ensure_ascii=False) if as_json else render_sample(picked))
    elif as_json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        print(render_text(result))
    return 0


def add_inspect_options(parser: argparse.ArgumentParser) -> None:
    """The options `inspect` takes beyond FILE and --json (shared by app.py and this module)."""
    parser.add_argument("--sample", nargs="+", metavar=("SPEAKER", "N"), default=None,
                        help=f"print N (default {DEFAULT_N}) of the turns that would be trained for SPEAKER")
    parser.add_argument("--keep", action="append", default=[], metavar="BODY",
                        help="a message body the import set aside as a repeated label that is someone's words; repeatable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.chatimport.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    insp = sub.add_parser("inspect", help="show what a chat export holds")
    insp.add_argument("file")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    add_inspect_options(insp)
    args = parser.parse_args(argv)
    return inspect_command(args.file, args.json, args.sample, args.keep)


if __name__ == "__main__":
    sys.exit(main())
