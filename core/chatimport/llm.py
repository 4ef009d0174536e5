"""LLM chat datasets: OpenAI fine-tuning JSONL, ShareGPT (JSON or JSONL), SillyTavern chats.

These have roles instead of people: the speakers are the role names as the file writes
them ("user"/"assistant", "human"/"gpt", or SillyTavern's character names). System
prompts and tool messages are kept as system lines: they are instructions, not a voice.
Each record of OpenAI or ShareGPT data is its own conversation, without times.
"""

from __future__ import annotations

import json
from typing import Iterator

from core.errors import ExportInvalid

from .jsonstream import JsonWalker
from .model import MEDIA, SYSTEM, TEXT, Conversation, Message
from .sources import ProgressTracker, Source, iter_lines, open_text
from .timeparse import parse_loose

_SYSTEM_ROLES = {"system", "tool", "function", "developer"}


def _content(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in value)
    return ""


def _role_message(role, content) -> Message:
    role = str(role or "(unknown)")
    text = _content(content).strip()
    if role.lower() in _SYSTEM_ROLES:
        return Message(role, None, text, SYSTEM)
    if not text:
        return Message(role, None, "", MEDIA if content else SYSTEM)
    return Message(role, None, text, TEXT)


def _jsonl(src: Source, tracker) -> Iterator[tuple[int, dict]]:
    for n, line in enumerate(iter_lines(src, tracker), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise ExportInvalid(f"{src.basename!r} line {n:,} nests its JSON too deeply to be a chat export; "
                                "the file is damaged or was not written by a chat tool.") from None
        except ValueError as exc:  # JSONDecodeError, or valid JSON Python will not read (a 5,000-digit number)
            raise ExportInvalid(f"{src.basename!r} line {n:,} is not valid JSON ({getattr(exc, 'msg', exc)}); "
                                "the file may be truncated or not JSON Lines.") from None
        if not isinstance(obj, dict):
            raise ExportInvalid(f"{src.basename!r} line {n:,} is not a JSON object.")
        yield n, obj


def parse_openai(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        for n, obj in _jsonl(src, tracker):
            msgs = obj.get("messages")
            if not isinstance(msgs, list):
                raise ExportInvalid(f"{src.basename!r} line {n:,} has no \"messages\" list.")
            yield Conversation(title=f"{src.basename} #{n}")
            for m in msgs:
                yield _role_message(m.get("role"), m.get("content")) if isinstance(m, dict) else Message(None, None, "", SYSTEM)


def _sharegpt_record(rec, label: str) -> Iterator:
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
        raise ExportInvalid(f"{label} has no \"conversations\" list (ShareGPT records need one).")
    yield Conversation(title=str(rec.get("id") or label))
    if rec.get("system"):
        yield Message("system", None, str(rec["system"]), SYSTEM)
    for turn in rec["conversations"]:
        if isinstance(turn, dict):
            yield _role_message(turn.get("from", turn.get("role")), turn.get("value", turn.get("content")))


def parse_sharegpt(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        head = src.head(256).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"["):
            with open_text(src, tracker) as fh:
                n = 0
                for event, _path, value in JsonWalker(fh, src.basename, [("*",)]).walk():
                    if event == "item":
                        n += 1
                        yield from _sharegpt_record(value, f"{src.basename} record {n:,}")
        else:
            for n, obj in _jsonl(src, tracker):
                yield from _sharegpt_record(obj, f"{src.basename} line {n:,}")


def parse_sillytavern(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        started = False
        for n, obj in _jsonl(src, tracker):
            if "mes" not in obj:  # the header line: user_name, character_name, chat_metadata
                if not started:
                    yield Conversation(title=str(obj.get("character_name") or src.basename))
                    started = True
                continue
            if not started:
                yield Conversation(title=src.basename)
                started = True
            name = str(obj.get("name") or ("You" if obj.get("is_user") else "(unknown)"))
            when = parse_loose(obj.get("send_date"))
            text = str(obj.get("mes") or "").strip()
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            if obj.get("is_system") or extra.get("type") == "narrator":
                yield Message(name, when, text, SYSTEM)
            elif not text:
                yield Message(name, when, "", MEDIA if extra.get("image") else SYSTEM)
            else:
                yield Message(name, when, text, TEXT)
