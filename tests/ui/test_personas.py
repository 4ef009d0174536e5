"""The persona editor in real headless Chromium: create with an adapter, refuse a broken one."""

from __future__ import annotations

import re
import zipfile

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _zip(folder, dest, corrupt: bool = False):
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            data = f.read_bytes()
            if corrupt and f.name == "adapter_model.safetensors":
                data = data[:40] + b"\x00garbage" * 50
            zf.writestr(f"my-adapter/{f.name}", data)
    return dest


def _open_editor(page):
    page.locator("#tab-personas-button, button[role=tab]:has-text('Personas')").first.click()
    expect(page.locator("#pe-name textarea, #pe-name input").first).to_be_visible()


def _field(page, elem):
    return page.locator(f"#{elem} textarea, #{elem} input").first


def test_create_persona_with_adapter_and_chat(chat_page, tiny_adapters, tmp_path):
    page = chat_page.page
    _open_editor(page)
    _field(page, "pe-name").fill("Wren <i>the</i> Bard")
    _field(page, "pe-tagline").fill("Sings everything")
    _field(page, "pe-greeting").fill("Hello, {{user}}! I am {{char}}.")
    _field(page, "pe-personality").fill("Musical")
    page.locator("#pe-files input[type=file]").set_input_files(str(_zip(tiny_adapters["a"], tmp_path / "a.zip")))
    expect(page.locator("#pe-files")).to_contain_text(re.compile(r"a\s*\.zip"))  # uploaded before saving (Chromium may split name and extension)
    page.locator("#pe-save").click()
    expect(page.locator(".toast-body").last).to_contain_text("Adapter version 1 attached", timeout=60_000)
    expect(page.locator("#pe-adapter-info")).to_contain_text("version 1")
    # the picker in the chat tab shows the new persona (name escaped, with its line and a LoRA badge)
    card = page.locator("#ch-personas-list .ch-card", has_text="Wren <i>the</i> Bard")
    expect(card).to_have_count(1)
    expect(card.locator(".ch-tag-lora")).to_have_count(1)
    # the greeting opens a new conversation with that persona
    page.locator("#pe-chat").click()
    expect(page.locator("#ch-active")).to_contain_text("Wren <i>the</i> Bard")
    expect(page.locator("#ch-transcript .ch-msg.ch-assistant").first).to_contain_text("I am Wren")
    chat_page.set_sampling(max_new_tokens=8, seed=1)
    chat_page.send("Sing!")
    assert chat_page.replies()[-1][0] == "Wren <i>the</i> Bard"
    expect(page.locator("#ch-status")).to_contain_text("Wren", timeout=10_000)  # its adapter is resident


def test_broken_adapter_is_refused_and_nothing_changes(chat_page, tiny_adapters, tmp_path):
    page = chat_page.page
    _open_editor(page)
    page.locator("#pe-pick input").first.click()
    page.get_by_role("option", name="Juniper").click()
    expect(_field(page, "pe-name")).to_have_value("Juniper")
    before = _field(page, "pe-description").input_value()
    _field(page, "pe-description").fill("This edit must not be saved")
    page.locator("#pe-files input[type=file]").set_input_files(
        str(_zip(tiny_adapters["b"], tmp_path / "broken.zip", corrupt=True)))
    expect(page.locator("#pe-files")).to_contain_text("broken.zip")
    page.locator("#pe-save").click()
    toast = chat_page.toast_text()
    assert "adapter" in toast.lower() and "Traceback" not in toast, toast
    expect(page.locator("#pe-adapter-info")).to_contain_text("none")
    # reload the persona: the description was not touched
    page.reload()
    chat_page.open()
    _open_editor(page)
    page.locator("#pe-pick input").first.click()
    page.get_by_role("option", name="Juniper").click()
    expect(_field(page, "pe-description")).to_have_value(before)


def test_delete_persona_asks_first(chat_page):
    page = chat_page.page
    _open_editor(page)
    _field(page, "pe-name").fill("Temporary")
    page.locator("#pe-save").click()
    expect(page.locator("#ch-personas-list .ch-card", has_text="Temporary")).to_have_count(1, timeout=20_000)
    page.locator("#pe-delete").click()
    expect(page.locator("#pe-confirm").first).to_contain_text("Delete Temporary")
    page.locator("#pe-yes").click()
    expect(page.locator("#ch-personas-list .ch-card", has_text="Temporary")).to_have_count(0)
