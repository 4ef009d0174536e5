"""`import`, `export`, `export-conversation` at the command line: output, exit codes, no tracebacks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cards.cli import export_command, export_conversation_command, import_command
from core.cards import read_card
from storage.store import Store
from tests.cards.helpers import V2_CARD, b64json, png_with_text

ROOT = Path(__file__).resolve().parents[2]


def _app_has(command: str) -> bool:
    from app import build_parser

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args([command, "x", "--out", "y"] if command.startswith("export") else [command, "x"])
        except SystemExit:
            return False
    return True


@pytest.fixture
def card_json(tmp_path) -> Path:
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(V2_CARD))
    return path


def test_import_prints_a_summary(card_json, capsys):
    assert import_command(str(card_json), False) == 0
    out = capsys.readouterr().out
    assert "Imported 'Captain Mira' as persona captain-mira (from a V2 card JSON)." in out
    assert "Adapter: none" in out


def test_import_json_is_one_object(tmp_path, capsys):
    path = tmp_path / "card.png"
    path.write_bytes(png_with_text((b"chara", b64json(V2_CARD))))
    assert import_command(str(path), True) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj == {"persona_id": "captain-mira", "name": "Captain Mira", "source_format": "png-chara",
                   "adapter_version": None, "warnings": [], "has_avatar": True}


def test_import_refusal_is_one_line_on_stderr(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "X", "description": ')
    assert import_command(str(path), True) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: The card file is not valid JSON") and captured.err.count("\n") == 1
    assert Store().personas.list() == []


def test_import_bundle_checks_the_adapter_against_model(tmp_path, capsys, tiny_adapters, tiny_model_dir):
    from core.cards import write_bundle
    from core.cards.model import Card

    bundle = write_bundle(Card(name="Voice"), tiny_adapters["a"], tmp_path / "voice.charx")
    assert import_command(str(bundle), True, model_spec=str(tiny_model_dir)) == 0
    assert json.loads(capsys.readouterr().out)["adapter_version"] == 1


def test_export_formats_and_the_adapter_note(card_json, tmp_path, capsys, tiny_adapters):
    from core.adapters import inspect_adapter

    import_command(str(card_json), False)
    store = Store()
    store.adapters.add_version("captain-mira", tiny_adapters["a"], inspect_adapter(tiny_adapters["a"]).store_meta())
    capsys.readouterr()

    assert export_command("Captain Mira", str(tmp_path / "mira.charx")) == 0
    assert "(card, adapter v1;" in capsys.readouterr().out
    assert read_card(tmp_path / "mira.charx").has_adapter

    assert export_command("captain-mira", str(tmp_path / "mira.png")) == 0
    captured = capsys.readouterr()
    assert "cannot carry the persona's adapter" in captured.err  # a note, not the answer
    assert captured.out.startswith("Exported 'Captain Mira' to ") and captured.out.count("\n") == 1

    assert export_command("nobody", str(tmp_path / "x.json")) == 2
    assert "No persona is called 'nobody'" in capsys.readouterr().err
    assert export_command("captain-mira", str(tmp_path / "x.txt")) == 2
    assert "use .charx" in capsys.readouterr().err


def test_export_conversation_command(tmp_path, capsys):
    store = Store()
    cid = store.conversations.create("Chat")["id"]
    store.conversations.add_message(cid, "assistant", "Hello", parent_id=None, persona_id="m", persona_name="Mira")
    assert export_conversation_command(cid, str(tmp_path / "c.jsonl")) == 0
    assert json.loads((tmp_path / "c.jsonl").read_text())["messages"][0]["name"] == "Mira"
    assert export_conversation_command("missing", str(tmp_path / "d.md")) == 2
    assert capsys.readouterr().err.startswith("error: There is no conversation 'missing'")


@pytest.mark.skipif(not _app_has("import"), reason="app.py does not have `import` yet (the lead wires it)")
def test_app_import_and_export_subprocess(card_json, tmp_path, chorus_home):
    env = {**os.environ, "CHORUS_HOME": str(chorus_home)}
    run = lambda *args: subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    done = run("import", str(card_json), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["persona_id"] == "captain-mira"
    done = run("export", "captain-mira", "--out", str(tmp_path / "out.png"))
    assert done.returncode == 0, done.stderr
    assert read_card(tmp_path / "out.png").card.name == "Captain Mira"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    done = run("import", str(bad))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
