"""Screenshots of the main views (chat, group chat, persona editor, conversation list).

The test takes them with the tiny random-weight model, so a page that fails to render fails
here; its replies are gibberish, so the pictures in the docs are taken by
`python docs/screenshots.py`, which runs the same steps (`take_screenshots`) against the
embedded SmolLM2-135M and writes docs/screenshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SHOTS = ("chat.png", "group-chat.png", "conversations.png", "persona-editor.png")


def take_screenshots(chat_page, out: Path, max_new_tokens: int = 24, temperature: float = 0.7) -> None:
    """Chat as a person does (typed, Enter), then the four pictures into `out`."""
    page = chat_page.page
    chat_page.set_sampling(max_new_tokens=max_new_tokens, seed=21, temperature=temperature)
    chat_page.pick("Captain Mara")
    chat_page.send("Where are we sailing today?")
    page.locator("#ch-regen").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("2/2", timeout=120_000)
    chat_page.wait_done(2, timeout=180_000)
    chat_page.pick("Professor Quill")
    chat_page.send("Professor, what do you make of that? Use **markdown** and `code`.")
    for persona, text in [("Byte", "How do I list files in Python?"), ("Juniper", "My tomatoes wilt.")]:
        page.locator("#ch-new").click()
        chat_page.pick(persona)
        chat_page.send(text)
    # a group chat of three
    page.locator("#ch-group-open").click()
    panel = page.locator("#ch-group-new").first
    for name in ("Captain Mara", "Juniper", "Professor Quill"):
        panel.get_by_label(name, exact=True).check()
    page.locator("#ch-group-start").click()
    expect(page.locator("#ch-active")).to_contain_text("Group chat with")
    # everyone at once: each member answers the message itself (in turn, a 135M model
    # mostly repeats the reply before it, which makes a poor picture of three voices)
    page.locator("#ch-mode input").first.click()
    page.get_by_role("option", name="Everyone at once").click()
    expect(page.locator("#ch-active")).to_contain_text("everyone at once")
    box = page.locator("#ch-input textarea")
    box.click()
    page.keyboard.type("We have one free evening. What should the three of you do together?")
    page.keyboard.press("Enter")
    chat_page.wait_done(3, timeout=300_000)
    _settle(page)
    page.screenshot(path=str(out / "group-chat.png"))
    page.locator("#ch-convlist .ch-conv").nth(3).click()
    expect(page.locator("#ch-transcript .ch-msg.ch-user")).to_have_count(2)
    _settle(page)
    page.screenshot(path=str(out / "chat.png"))
    page.locator("#ch-convlist").screenshot(path=str(out / "conversations.png"))
    page.locator("button[role=tab]:has-text('Personas')").first.click()
    page.locator("#pe-pick input").first.click()
    page.get_by_role("option", name="Captain Mara").click()
    expect(page.locator("#pe-name input, #pe-name textarea").first).to_have_value("Captain Mara")
    page.screenshot(path=str(out / "persona-editor.png"), full_page=True)


def _settle(page) -> None:
    page.mouse.move(900, 500)
    page.wait_for_timeout(1500)  # let the last updates settle
    page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")


def test_screenshots(chat_page, tmp_path):
    take_screenshots(chat_page, tmp_path)
    assert all((tmp_path / n).stat().st_size > 5000 for n in SHOTS)
