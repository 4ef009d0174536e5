"""Bad input: one clear message, exit code 2, no traceback, no hang."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.chatimport import build_examples, load_export
from core.chatimport.cli import inspect_command
from core.errors import ExportFormatUnknown, ExportInvalid, UnsafeArchive

from .helpers import edge, real

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,error,words", [
    ("bad_unknown.txt", ExportFormatUnknown, "not a chat export"),
    ("bad_binary.bin", ExportFormatUnknown, "not a chat export"),
    ("character_card.json", ExportFormatUnknown, "character card"),
    ("bad_damaged_utf8_whatsapp.txt", ExportInvalid, "not UTF-8"),
    ("bad_truncated_telegram.json", ExportInvalid, "truncated"),
    ("bad_malformed.json", ExportInvalid, "not valid JSON"),
    ("empty.txt", ExportInvalid, "empty"),
    ("wa_only_system.txt", ExportInvalid, "no messages written by anyone"),
])
def test_bad_files(name, error, words):
    with pytest.raises(error) as info:
        load_export(edge(name))
    assert words in str(info.value)


def test_missing_path():
    with pytest.raises(ExportInvalid, match="no file or folder"):
        load_export(edge("does-not-exist.txt"))


def test_empty_folder(tmp_path):
    with pytest.raises(ExportInvalid, match="empty"):
        load_export(tmp_path)


def test_zip_with_path_traversal(tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("_chat.txt", "12/24/19, 11:23 - A: hi\n")
        z.writestr("../../etc/passwd", "root")
    with pytest.raises(UnsafeArchive, match="unsafe path"):
        load_export(bad)


def test_zip_bomb(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_chat.txt", "12/24/19, 11:23 - A: hi\n" + "\n" * (8 * 1024 * 1024))
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        load_export(bomb)


def test_truncated_zip(tmp_path):
    data = (edge("wa_export_with_junk.zip")).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeArchive):
        load_export(cut)


def test_speaker_never_speaks():
    r = load_export(real("whatsapp__Pustur_whatsapp-chat-parser-website___chat.txt"))
    with pytest.raises(ExportInvalid) as info:
        build_examples(r, "Mallory")
    assert "Loris (24)" in str(info.value) and "Emily (7)" in str(info.value)


def test_inspect_command_exit_codes(capsys):
    assert inspect_command(str(edge("bad_unknown.txt")), False) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert inspect_command(str(real("whatsapp__joweich_chat-miner__testlog.txt")), True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "whatsapp" and out["messages"] == 23
    assert out["speakers"]["John Doe"] == 10 and out["skipped"] == {"system": 3}
    assert out["first"] == "2014-12-24T17:08:00" and out["last"] == "2022-12-24T13:01:00"


def test_inspect_human_text(capsys):
    assert inspect_command(str(real("whatsapp__Pustur_whatsapp-chat-parser-website___chat.txt")), False) == 0
    out = capsys.readouterr().out
    assert "WhatsApp" in out and "Loris" in out and "poll: 1" in out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core.chatimport.cli", "inspect", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_module_cli_json():
    p = _cli(str(edge("telegram_full_account.json")), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"format", "messages", "speakers", "first", "last", "skipped"} <= out.keys()
    assert out["messages"] == 12


@pytest.mark.parametrize("name", ["bad_truncated_telegram.json", "bad_damaged_utf8_whatsapp.txt", "empty.txt"])
def test_module_cli_errors(name):
    p = _cli(str(edge(name)), "--json")
    assert p.returncode == 2 and p.stdout == ""
    assert "Traceback" not in p.stderr and p.stderr.startswith("error: ")
