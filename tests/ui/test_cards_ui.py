"""Card import/export and conversation export in real headless Chromium (one app process)."""

from __future__ import annotations

import io

import pytest
from playwright.sync_api import expect

from core.cards import Card, card_to_png, read_card, write_bundle

pytestmark = pytest.mark.browser

NAME = "Nyx <b>Moth</b>"  # shown as text, never as markup
DESCRIPTION = "A moth who reads by lamplight."


def _avatar() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _open_editor(page):
    page.locator("button[role=tab]:has-text('Personas')").first.click()
    expect(page.locator("#pe-import")).to_be_visible()


def _import(page, path):
    with page.expect_file_chooser() as chooser:
        page.locator("#pe-import").click()
    chooser.value.set_files(str(path))


def _choose(page, elem, option):
    page.locator(f"#{elem} input").first.click()
    page.get_by_role("option", name=option).click()


def _download(page, export_button, download_button, dest):
    page.locator(export_button).click()
    button = page.locator(download_button)
    expect(button).to_be_visible(timeout=20_000)
    with page.expect_download(timeout=20_000) as info:
        button.click()
    info.value.save_as(dest)
    return dest


def _toasts(page) -> str:
    return " | ".join(page.locator(".toast-body").all_inner_texts())


def test_import_png_card_and_export_it_as_bundle_and_json(chat_page, tmp_path):
    page = chat_page.page
    png = tmp_path / "nyx.png"
    png.write_bytes(card_to_png(Card(name=NAME, description=DESCRIPTION, greeting="Hello, {{user}}.",
                                     avatar=_avatar())))
    _open_editor(page)
    _import(page, png)
    expect(page.locator(".toast-body", has_text="Imported").last).to_contain_text(NAME, timeout=30_000)
    # the editor shows the new persona, and the picker has it with its name and avatar
    expect(page.locator("#pe-name input, #pe-name textarea").first).to_have_value(NAME)
    expect(page.locator("#pe-description textarea").first).to_have_value(DESCRIPTION)
    card = page.locator("#ch-personas-list .ch-card", has_text=NAME)
    expect(card).to_have_count(1)
    expect(card.locator("img.ch-av")).to_have_count(1)
    assert page.locator("#ch-personas-list b").count() == 0  # the name's tags are text

    bundle = _download(page, "#pe-export", "#pe-export-download", tmp_path / "out.charx")
    expect(page.locator("#pe-export-download")).to_contain_text("Nyx-b-Moth-b.charx")
    got = read_card(bundle).card
    assert (got.name, got.description) == (NAME, DESCRIPTION) and got.avatar

    _choose(page, "pe-export-format", "Character card V2 (.json)")
    expect(page.locator("#pe-export-download")).to_be_hidden()  # the bundle's link is gone
    js = _download(page, "#pe-export", "#pe-export-download", tmp_path / "out.json")
    got = read_card(js).card
    assert (got.name, got.description) == (NAME, DESCRIPTION)


def test_bundle_with_adapter_imports_it_and_png_export_warns(chat_page, tiny_adapters, tmp_path):
    page = chat_page.page
    bundle = write_bundle(Card(name="Lark", description="Sings."), tiny_adapters["a"], tmp_path / "lark.charx")
    _open_editor(page)
    _import(page, bundle)
    expect(page.locator(".toast-body", has_text="Imported Lark").last).to_contain_text(
        "with its LoRA adapter (version 1)", timeout=60_000)
    expect(page.locator("#pe-adapter-info")).to_contain_text("version 1")
    expect(page.locator("#ch-personas-list .ch-card", has_text="Lark").locator(".ch-tag-lora")).to_have_count(1)
    _choose(page, "pe-export-format", "PNG card (.png)")
    out = _download(page, "#pe-export", "#pe-export-download", tmp_path / "lark.png")
    assert read_card(out).card.name == "Lark"
    expect(page.locator(".toast-body", has_text="adapter is not in the PNG card")).to_have_count(1, timeout=10_000)


def test_broken_card_shows_a_readable_error_and_changes_nothing(chat_page, tmp_path):
    page = chat_page.page
    _open_editor(page)
    before = page.locator("#ch-personas-list .ch-card").count()
    broken = tmp_path / "broken.png"
    broken.write_bytes(card_to_png(Card(name="Half", description="cut off"))[:60])
    _import(page, broken)
    toast = chat_page.toast_text()
    assert "broken.png was not imported" in toast and "Traceback" not in toast, toast
    page.reload()
    chat_page.open()
    assert page.locator("#ch-personas-list .ch-card").count() == before
    assert page.locator("#ch-personas-list .ch-card", has_text="Half").count() == 0


def test_conversation_export_as_markdown_and_switch_in_status(chat_page, tmp_path):
    page = chat_page.page
    chat_page.pick("Juniper")
    expect(page.locator("#ch-status")).to_contain_text("last switch: Juniper", timeout=10_000)
    chat_page.set_sampling(max_new_tokens=6, seed=3)
    chat_page.send("What grows in shade?")
    page.locator("#ch-conv-manage").get_by_text("Rename or delete").click()
    md = _download(page, "#ch-conv-export", "#ch-conv-download", tmp_path / "conv.md").read_text()
    assert "**Juniper**" in md and "What grows in shade?" in md, md
    _choose(page, "ch-conv-export-format", "OpenAI chat JSONL (.jsonl)")
    jl = _download(page, "#ch-conv-export", "#ch-conv-download", tmp_path / "conv.jsonl").read_text()
    assert '"name": "Juniper"' in jl or '"name":"Juniper"' in jl, jl
    page.locator("#ch-new").click()
    expect(page.locator("#ch-conv-download")).to_be_hidden()


def test_status_line_names_the_session_switch_and_the_adapter_swap():
    from ui.status import switch_text

    names = {"jun": "Juniper", "wren": "Wren"}
    assert switch_text(None, {}, names) == "last switch: none yet"
    user = {"persona": "jun", "name": "Juniper", "bare": True, "at": 1000.0}
    assert switch_text(user, {}, names).endswith("(no adapter)")
    swap = {"adapter": "wren__abc123", "at": 1001.0, "ms": 0.3}
    assert ", adapter swap 0.3 ms" in switch_text({**user, "persona": "wren", "bare": False}, swap, names)
    assert "adapter swap" not in switch_text(user, swap, names)  # another persona's swap
    assert ", adapter swap 0.1 ms" in switch_text(user, {"adapter": None, "at": 1002.0, "ms": 0.1}, names)
    assert "&lt;i&gt;" in switch_text({**user, "persona": "x", "name": "<i>X</i>"}, {}, {})


def test_plain_card_imports_while_the_model_loads_but_an_adapter_waits(chorus_home, tiny_adapters, tmp_path):
    import gradio as gr
    from types import SimpleNamespace

    from core.cards import card_to_v2_json
    from storage.store import Store
    from ui.cards_view import CardsView
    from ui.chat_view import ChatView
    from ui.session import Sessions, new_state

    store = Store(chorus_home)
    runtime = SimpleNamespace(store=store, ready=False, error=None, switching=None, progress=["Loading tiny (NF4)..."])
    view = CardsView(runtime, ChatView(runtime, Sessions()), choices=lambda: [])
    card = tmp_path / "plain.json"
    card.write_bytes(card_to_v2_json(Card(name="Plain", description="No adapter.")))
    pick, picker = view.import_file(str(card), new_state(None))
    assert store.personas.get(pick["value"])["name"] == "Plain" and "Plain" in picker
    bundle = write_bundle(Card(name="Lark"), tiny_adapters["a"], tmp_path / "lark.charx")
    with pytest.raises(gr.Error, match="still loading"):
        view.import_file(str(bundle), new_state(None))
    assert [p["name"] for p in store.personas.list()] == ["Plain"]
