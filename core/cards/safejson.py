"""Parsing card JSON that came from outside, within bounds.

Checks happen before and after `json.loads`: the size and the nesting depth first (a
`[[[[...` file would otherwise end in a RecursionError deep inside the parser), the length
of every string after. Every refusal is a `CardInvalid` that says what to do.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from core.errors import CardInvalid
from core.cards.model import MAX_CARD_JSON_BYTES, MAX_JSON_DEPTH, MAX_STRING_CHARS

# A JSON string literal, unrolled so that it runs in linear time on a 2 MB input.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def decode_text(data: bytes, what: str) -> str:
    """Bytes to text: UTF-8 (with or without BOM), or UTF-16 when a BOM says so."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CardInvalid(
            f"The {what} is not readable {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text "
            f"(bad byte at position {exc.start}). Save it again as UTF-8 and retry."
        ) from None


def _depth(text: str) -> int:
    """The deepest bracket nesting outside string literals."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON; a card holding them could not be exported again.
    raise ValueError(f"{name} is not valid JSON")


def loads_bounded(data: bytes | str, what: str = "card") -> Any:
    """Parse JSON within the card limits; raise `CardInvalid` with a plain reason otherwise."""
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > MAX_CARD_JSON_BYTES:
        raise CardInvalid(
            f"The {what} is {size / 1024**2:.1f} MB of JSON, more than the "
            f"{MAX_CARD_JSON_BYTES // 1024**2} MB a character card may hold. It is probably not a card, "
            "or it embeds images as text; remove them in the editor that made it."
        )
    text = decode_text(data, what) if isinstance(data, bytes) else data
    text = text.lstrip("\ufeff")
    depth = _depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CardInvalid(
            f"The {what} nests JSON {depth} levels deep (the limit is {MAX_JSON_DEPTH}); "
            "real cards never do. The file is damaged or hostile; it was not imported."
        )
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        elif str(exc):
            where = f" ({exc})"
        raise CardInvalid(
            f"The {what} is not valid JSON{where}. It may be cut short or edited by hand; "
            "export it again from the app that made it."
        ) from None
    check_strings(obj, what)
    return obj


def check_strings(obj: Any, what: str = "card") -> None:
    """Refuse any string (value or key) longer than `MAX_STRING_CHARS`, naming where it is."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                label = path or "text"
                raise CardInvalid(
                    f"The {what}'s field {label} is {len(node) / 1024:,.0f} KB long; a field may hold at most "
                    f"{MAX_STRING_CHARS // 1024} KB. Shorten it in the editor that made the card and export again."
                )
        elif isinstance(node, dict):
            for key, value in node.items():
                if len(key) > MAX_STRING_CHARS:
                    raise CardInvalid(f"The {what} has a key {len(key) / 1024:,.0f} KB long; it is not a real card.")
                stack.append((value, f"{path}.{key}" if path else key))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]") for i, value in enumerate(node))
