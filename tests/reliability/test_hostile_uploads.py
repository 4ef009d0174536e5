"""Hostile uploads through the three ways files come in (chat export, character card,
adapter upload): each is answered with a clear ChorusError in bounded time and memory,
and nothing is written outside CHORUS_HOME.

What single formats already prove is in tests/chatimport/test_bad_input.py,
tests/chatimport/test_large.py, tests/cards/test_limits.py and tests/cards/test_bundles.py;
this file runs every hostile file through every entry point, and the huge ones in a
separate process so that their memory can be measured."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from core.chatimport import load_export
from core.errors import ChorusError, ExportFormatUnknown, ExportInvalid
from core.persona_cards import import_card
from storage.store import Store
from tests.cards.helpers import symlink_info
from ui.uploads import discard, prepare_adapter

ROOT = Path(__file__).resolve().parents[2]
WA_LINE = b"12/01/2020, 10:00 - Ann: hi there\n12/01/2020, 10:01 - Bob: hello\n"


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def hostile_files() -> dict[str, bytes]:
    whole = _zip([("_chat.txt", WA_LINE * 200)])
    return {
        "empty.json": b"",
        "empty.zip": b"",
        "binary.png": os.urandom(64 * 1024),
        "binary.txt": bytes(range(256)) * 256,
        "truncated.zip": whole[: len(whole) // 2],
        "bomb.zip": _zip([("_chat.txt", b"\0" * (64 * 1024**2))]),
        "traversal.zip": _zip([("../../outside.txt", WA_LINE), ("adapter_config.json", b"{}")]),
        "absolute.zip": _zip([("/tmp/chorus-outside.txt", WA_LINE)]),
        "backslash.zip": _zip([("..\\..\\outside.txt", WA_LINE)]),
        "symlink.zip": _zip([(symlink_info("_chat.txt"), b"/etc/passwd"), (symlink_info("adapter_config.json"), b"/etc/passwd")]),
        "nested.json": b"[" * 200_000 + b"]" * 200_000,
        "nested-telegram.json": b'{"name": "x", "type": "personal_chat", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "pickle.bin": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
    }


def snapshot(folder: Path, skip: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if skip not in p.parents and p != skip}


@pytest.fixture
def jail(tmp_path, monkeypatch):
    """parent/{home, uploads, systmp}: CHORUS_HOME, the files, and the process temp dir."""
    home, uploads, systmp = tmp_path / "home", tmp_path / "uploads", tmp_path / "systmp"
    for d in (home, uploads, systmp):
        d.mkdir()
    monkeypatch.setenv("CHORUS_HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return tmp_path


ENTRY_POINTS = {
    "export": lambda store, path: load_export(path),
    "card": lambda store, path: import_card(store, path),
    "adapter": lambda store, path: discard(prepare_adapter([str(path)], store.home)),
}


def test_every_hostile_file_through_every_entry_point(jail):
    home = jail / "home"
    store = Store(home)
    files = {}
    for name, data in hostile_files().items():
        (jail / "uploads" / name).write_bytes(data)
        files[name] = jail / "uploads" / name
    before = snapshot(jail, home)
    personas_before = [p["id"] for p in store.personas.list()]
    answers, slow = {}, []
    for name, path in files.items():
        for entry, call in ENTRY_POINTS.items():
            t0 = time.perf_counter()
            try:
                call(store, path)
                answers[(name, entry)] = "accepted"
            except ChorusError as exc:
                answers[(name, entry)] = f"{type(exc).__name__}: {exc}"
                assert str(exc).strip() and "Traceback" not in str(exc)
            except Exception as exc:  # anything else is a bug: report them all at once
                answers[(name, entry)] = f"RAW {type(exc).__name__}: {exc}"[:200]
            if time.perf_counter() - t0 > 10:
                slow.append((name, entry, round(time.perf_counter() - t0, 1)))
    assert slow == []
    assert {k: v for k, v in answers.items() if v == "accepted" or v.startswith("RAW")} == {}
    # nothing written outside CHORUS_HOME (uploads untouched, temp dir empty), nothing half-kept inside
    assert snapshot(jail, home) == before
    assert [p["id"] for p in store.personas.list()] == personas_before
    assert not list((home / "tmp").glob("*")) if (home / "tmp").exists() else True
    assert not [p for p in home.rglob("*") if p.name.startswith((".import-", ".tmp-"))]
    assert not Path("/tmp/chorus-outside.txt").exists()
    if os.environ.get("CHORUS_RELIABILITY_ANSWERS"):
        Path(os.environ["CHORUS_RELIABILITY_ANSWERS"]).write_text(json.dumps({f"{n} | {e}": v for (n, e), v in answers.items()}, indent=1))


NESTED = b"[" * 100_000 + b"]" * 100_000
TG_HEAD = b'{"name": "x", "type": "personal_chat", "id": 1, "messages": [{"id": 1, "type": "message", ' \
          b'"date": "2020-01-01T00:00:00", "from": "a", "text": "hi"}, '
OPENAI_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.mark.parametrize("name,data,error,words", [
    # nested within the part format detection reads: no format matches
    ("nested-telegram.json", hostile_files()["nested-telegram.json"], ExportFormatUnknown, "is not a chat export"),
    ("nested-first-line.jsonl", b'{"messages": ' + NESTED + b"}\n" + OPENAI_LINE, ExportFormatUnknown,
     "is not a chat export"),
    # recognised from its first record, nested further on: refused while reading
    ("nested-later-telegram.json", TG_HEAD + NESTED + b"]}", ExportInvalid, "nests its JSON too deeply (near character"),
    ("nested-later.jsonl", OPENAI_LINE + b'{"messages": ' + NESTED + b"}\n", ExportInvalid,
     "line 2 nests its JSON too deeply"),
])
def test_deeply_nested_json_chat_export_is_refused_clearly(name, data, error, words, jail):
    path = jail / "uploads" / name
    path.write_bytes(data)
    with pytest.raises(error) as info:
        load_export(path)
    assert words in str(info.value) and "Traceback" not in str(info.value)


def _probe(kind: str, path: Path, home: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.reliability.upload_probe", kind, str(path), str(home)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def huge_sparse(tmp_path_factory) -> Path:
    """600 MB of nothing (a sparse file: free to make), under four names."""
    folder = tmp_path_factory.mktemp("huge")
    first = folder / "huge.txt"
    with open(first, "wb") as fh:
        fh.truncate(600 * 1024**2)
    for ext in ("json", "png", "zip"):
        os.link(first, folder / f"huge.{ext}")
    return folder


@pytest.mark.parametrize("kind", ["export", "card", "adapter"])
@pytest.mark.parametrize("ext", ["txt", "json", "png", "zip"])
def test_a_600_mb_file_is_refused_in_bounded_time_and_memory(kind, ext, huge_sparse, jail):
    result = _probe(kind, huge_sparse / f"huge.{ext}", jail / "home")
    assert result["error"] and result["chorus"], result
    assert result["seconds"] < 15 and result["growth_mb"] < 100, result
    assert not [p for p in (jail / "home").rglob("*") if p.is_file() and p.stat().st_size > 1024**2]


def _write_long(path: Path, head: bytes, mb: int, tail: bytes = b"") -> Path:
    chunk = b"A" * 1024**2
    with open(path, "wb") as fh:
        fh.write(head)
        for _ in range(mb):
            fh.write(chunk)
        fh.write(tail)
    return path


# Messages longer than MAX_MESSAGE_CHARS are cut (tests/chatimport/test_limits.py); a JSON item or
# a line longer than MAX_ITEM_CHARS (8M characters) is refused before more of it is read.
@pytest.mark.parametrize("case", ["telegram-one-long-string", "whatsapp-one-long-line"])
def test_one_200_mb_message_in_a_chat_export_is_refused_in_bounded_memory(case, jail):
    if case.startswith("telegram"):  # well-formed: one message whose text is 200 MB
        head = b'{"name": "x", "type": "personal_chat", "id": 1, "messages": [{"id": 1, "type": "message", ' \
               b'"date": "2020-01-01T00:00:00", "from": "a", "text": "'
    else:
        head = WA_LINE + b"12/01/2020, 10:02 - Ann: "
    telegram = case.startswith("telegram")
    path = _write_long(jail / "uploads" / f"{case}.{'json' if telegram else 'txt'}", head, 200, b'"}]}' if telegram else b"\n")
    result = _probe("export", path, jail / "home")
    path.unlink()
    print(case, result)
    assert result["error"] == "ExportInvalid" and result["chorus"] and result["growth_mb"] < 100, result
    assert "longer than 8,000,000 characters" in result["message"], result
