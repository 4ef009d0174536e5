"""Screenshots of the main views (chat, persona editor, conversation list).

They are always taken (a page that fails to render fails here); with
CHORUS_UPDATE_SCREENSHOTS=1 they are written to docs/screenshots/ for the docs and README.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_screenshots(chat_page, tiny_adapters, tmp_path):
    out = DOCS if os.environ.get("CHORUS_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    page = chat_page.page
    chat_page.set_sampling(max_new_tokens=24, seed=21)
    chat_page.pick("Captain Mara")
    chat_page.send("Where are we sailing today?")
    page.locator("#ch-regen").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("2/2", timeout=60_000)
    chat_page.wait_done(2)
    chat_page.pick("Professor Quill")
    chat_page.send("Professor, what do you make of that? Use **markdown** and `code`.")
    for i, (persona, text) in enumerate([("Byte", "How do I list files in Python?"), ("Juniper", "My tomatoes wilt.")]):
        page.locator("#ch-new").click()
        chat_page.pick(persona)
        chat_page.send(text)
    page.locator("#ch-convlist .ch-conv").nth(2).click()
    expect(page.locator("#ch-transcript .ch-msg.ch-user")).to_have_count(2)
    page.mouse.move(900, 500)
    page.wait_for_timeout(1500)  # let the last updates settle
    page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "chat.png"))
    page.locator("#ch-convlist").screenshot(path=str(out / "conversations.png"))
    page.locator("button[role=tab]:has-text('Personas')").first.click()
    page.locator("#pe-pick input").first.click()
    page.get_by_role("option", name="Captain Mara").click()
    expect(page.locator("#pe-name input, #pe-name textarea").first).to_have_value("Captain Mara")
    page.screenshot(path=str(out / "persona-editor.png"), full_page=True)
    assert all((out / n).stat().st_size > 5000 for n in ("chat.png", "conversations.png", "persona-editor.png"))
