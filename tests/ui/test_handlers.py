"""The UI's handlers and HTML without a browser or a model: escaping, and a message sent
while the model is still loading (queued, and handed back if the user stops)."""

from __future__ import annotations

from types import SimpleNamespace

from core.starter import seed_starters
from storage.store import Store
from ui import render
from ui.chat_view import ChatView
from ui.session import Sessions, new_state


def test_markdown_renders_and_html_is_shown_not_run():
    out = render.markdown_html("**bold** <script>alert(1)</script> <img src=x onerror=alert(1)> [a](javascript:alert(1))")
    assert "<strong>bold</strong>" in out
    assert "<script" not in out and "<img" not in out and 'href="javascript' not in out
    assert "&lt;script&gt;" in out


def test_names_are_escaped_in_messages_and_cards():
    msg = {"id": 1, "role": "assistant", "content": "hi", "persona_id": "x", "persona_name": "<b onclick=x>Eve</b>", "meta": {}}
    html = render.message_html(msg, {})
    assert "<b onclick" not in html and "&lt;b onclick=x&gt;Eve&lt;/b&gt;" in html
    cards = render.persona_cards_html([{"id": "x", "name": "<i>Eve</i>", "tagline": "<u>t</u>"}], {}, "x")
    assert "<i>" not in cards and "<u>" not in cards


def test_message_sent_while_loading_is_queued_then_handed_back_on_stop(chorus_home):
    store = Store(chorus_home)
    seed_starters(store)
    runtime = SimpleNamespace(store=store, ready=False, error=None, switching=None, progress=["Loading tiny (NF4)..."])
    sessions = Sessions()
    view = ChatView(runtime, sessions)
    request = SimpleNamespace(session_hash="tab-1")
    steps = view.send("hello there", new_state("byte"), 0.7, 0.95, 20, -1, request)
    html, box, state, _ = next(steps)
    assert "still loading" in html and "hello there" in html and box == ""
    assert sessions.busy("tab-1")
    assert sessions.stop("tab-1")
    rest = list(steps)
    assert "was not sent" in rest[0][0]
    assert rest[-1][1] == "hello there"  # back in the message box
    assert state["conv"] is None and not sessions.busy("tab-1")
    assert store.conversations.list() == []


def test_sessions_keep_separate_stop_flags():
    sessions = Sessions()
    a, b = sessions.begin("a"), sessions.begin("b")
    sessions.stop("a")
    assert a.is_set() and not b.is_set()
    sessions.end("a", a)
    assert not sessions.busy("a") and sessions.busy("b")


def test_adapter_upload_as_loose_files_or_zip_and_pickles_refused(chorus_home, tmp_path):
    import zipfile

    import pytest

    from core.errors import ChorusError, UnsafeArchive
    from ui import uploads

    cfg = tmp_path / "adapter_config.json"
    cfg.write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(b"x")
    folder = uploads.prepare_adapter([str(cfg), str(weights)], chorus_home)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    uploads.discard(folder)
    assert not folder.exists()

    pickle = tmp_path / "adapter_model.bin"
    pickle.write_bytes(b"x")
    with pytest.raises(ChorusError, match="pickle"):
        uploads.prepare_adapter([str(cfg), str(pickle)], chorus_home)

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../adapter_config.json", "{}")
    with pytest.raises(UnsafeArchive):
        uploads.prepare_adapter([str(evil)], chorus_home)
    assert not any((chorus_home / "tmp").iterdir())  # scratch folders are cleaned up
