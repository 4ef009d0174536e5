"""The chat page in real headless Chromium against `python app.py` with the tiny model."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

STARTERS = ["Byte", "Captain Mara", "Detective Vale", "Juniper", "Professor Quill"]


def test_first_launch_shows_starter_personas_and_status(chat_page):
    page = chat_page.page
    cards = page.locator("#ch-personas-list .ch-card")
    assert [c.locator(".ch-card-name").inner_text().strip() for c in cards.all()] == STARTERS
    # avatar, name and a one-line description on each card; avatars actually load
    first = cards.first
    assert first.locator(".ch-card-line").inner_text().strip()
    assert page.evaluate("document.querySelector('#ch-personas-list img.ch-av').naturalWidth") > 0
    # the active persona is shown, with its greeting as the start of a new chat
    expect(page.locator("#ch-active")).to_contain_text("Byte")
    expect(page.locator("#ch-transcript .ch-msg.ch-assistant").first).to_contain_text("What are we fixing?")
    expect(page.locator("#ch-status")).to_contain_text("NF4", timeout=10_000)
    expect(page.locator("#ch-status")).to_contain_text("MB")


def test_reply_streams_token_by_token_and_html_does_not_run(chat_page):
    page = chat_page.page
    page.evaluate("window.__xss = 0")
    # The engine streams word by word; a random-weight model can emit a long run with no
    # space (shown in one piece), so try a few seeds until a reply has several words.
    for attempt, seed in enumerate((7, 8, 9)):
        chat_page.set_sampling(max_new_tokens=160, seed=seed, temperature=1.0)  # long enough to watch it stream
        chat_page.send("Hi <img src=x onerror='window.__xss=1'> **bold** <script>window.__xss=2</script>", wait=False)
        seen = chat_page.watch_streaming()
        chat_page.wait_done(2 + attempt)
        if chat_page.replies()[-1][1].count(" ") >= 8:
            break
    assert len(seen) >= 3, f"the reply arrived in {len(seen)} updates, not streamed: {seen}"
    assert all(len(a) <= len(b) for a, b in zip(seen, seen[1:]))
    user = page.locator("#ch-transcript .ch-msg.ch-user").last
    assert user.locator("strong").inner_text() == "bold"  # markdown renders
    assert "<img src=x" in user.locator(".ch-body").inner_text()  # HTML shows as text
    assert user.locator("img, script").count() == 0
    assert page.evaluate("window.__xss") == 0
    name, text = chat_page.replies()[-1]
    assert name == "Byte" and text.strip()
    # the conversation is listed with its title and persona
    expect(page.locator("#ch-convlist .ch-conv").first).to_contain_text("Byte")


def test_enter_sends_and_shift_enter_adds_a_line(chat_page):
    """Real key presses, as the placeholder says: Shift+Enter adds a line and sends nothing;
    Enter sends both lines, a reply comes, and the box is empty again."""
    page = chat_page.page
    chat_page.set_sampling(max_new_tokens=8, seed=6)
    box = page.locator("#ch-input textarea")
    expect(box).to_have_attribute("placeholder", "Message (Enter sends, Shift+Enter for a new line)")
    box.click()
    page.keyboard.type("First line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.wait_for_timeout(1000)  # time for a wrongly sent message to show up
    expect(box).to_have_value("First line\nsecond line")
    assert page.locator("#ch-transcript .ch-msg.ch-user").count() == 0
    page.keyboard.press("Enter")
    chat_page.wait_done(2)  # the greeting, then the reply
    user = page.locator("#ch-transcript .ch-msg.ch-user")
    expect(user).to_have_count(1)
    assert user.locator(".ch-raw").input_value() == "First line\nsecond line"
    name, text = chat_page.replies()[-1]
    assert name == "Byte"
    expect(box).to_have_value("")


def test_switching_persona_mid_conversation(chat_page):
    chat_page.set_sampling(max_new_tokens=12, seed=1)
    chat_page.send("Hello Byte")
    chat_page.pick("Juniper")
    chat_page.send("And you, Juniper?", via="click")  # the Send button works too
    names = [n for n, _ in chat_page.replies()]
    assert names == ["Byte", "Byte", "Juniper"]  # greeting, first reply, the new persona
    last = chat_page.last()
    assert "juniper" in last.locator("img.ch-av").get_attribute("src")
    # the conversation goes on: both user messages are still shown above
    assert chat_page.page.locator("#ch-transcript .ch-msg.ch-user").count() == 2
    expect(chat_page.page.locator("#ch-convlist .ch-conv").first).to_contain_text("Juniper")


def test_stop_keeps_the_partial_reply(chat_page):
    chat_page.set_sampling(max_new_tokens=2000, seed=3)
    page = chat_page.page
    chat_page.send("Tell me a very long story", wait=False)
    page.wait_for_function(
        "() => { const b = document.querySelector('#ch-transcript .ch-streaming .ch-body'); return b && b.innerText.trim().length > 5; }",
        timeout=60_000,
    )
    partial = page.locator("#ch-transcript .ch-streaming .ch-body").inner_text().strip()
    t0 = time.time()
    page.locator("#ch-stop").click()
    chat_page.wait_done(2, timeout=20_000)
    assert time.time() - t0 < 10
    last = chat_page.last()
    expect(last.locator(".ch-tag-stop")).to_be_visible()
    _, text = chat_page.replies()[-1]
    shown = last.locator(".ch-body").inner_text().strip()  # rendered, as `partial` was (text is the markdown source)
    assert shown.startswith(partial[:5]) and len(text) < 2000 * 4


def test_regenerate_keeps_a_sibling_to_swipe(chat_page):
    chat_page.set_sampling(max_new_tokens=10, temperature=1.0)
    page = chat_page.page
    chat_page.send("Give me a word")
    first = chat_page.replies()[-1][1]
    page.locator("#ch-regen").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("2/2", timeout=60_000)
    chat_page.wait_done(2)
    second = chat_page.replies()[-1][1]
    chat_page.last().locator("[data-act=prev]").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("1/2")
    assert chat_page.replies()[-1][1] == first
    chat_page.last().locator("[data-act=next]").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("2/2")
    assert chat_page.replies()[-1][1] == second


def test_edit_delete_and_copy_a_message(chat_page):
    chat_page.set_sampling(max_new_tokens=8, seed=5)
    page = chat_page.page
    chat_page.send("Something to edit")
    last = chat_page.last()
    last.hover()
    last.locator("[data-act=edit]").click()
    box = page.locator("#ch-edit-text textarea")
    expect(box).to_be_visible()
    box.fill("An *edited* reply")
    page.locator("#ch-edit-save").click()
    expect(chat_page.last().locator(".ch-body em")).to_have_text("edited")
    # copy puts the raw text on the clipboard
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat_page.last().locator("[data-act=copy]").click()
    assert page.evaluate("navigator.clipboard.readText()") == "An *edited* reply"
    # delete asks first (accepted by the page object), then the reply is gone
    users = page.locator("#ch-transcript .ch-msg.ch-user").count()
    chat_page.last().locator("[data-act=delete]").click()
    expect(page.locator("#ch-transcript .ch-msg.ch-assistant")).to_have_count(1)  # only the greeting is left
    assert page.locator("#ch-transcript .ch-msg.ch-user").count() == users


def test_two_tabs_keep_their_own_conversation_and_persona(browser, app):
    from tests.ui.pages import ChatPage

    ctx_a = browser.new_context(viewport={"width": 1400, "height": 950})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 950})
    try:
        a = ChatPage(ctx_a.new_page(), app.url).open()
        b = ChatPage(ctx_b.new_page(), app.url).open()
        a.set_sampling(max_new_tokens=24, seed=2)
        b.set_sampling(max_new_tokens=24, seed=2)
        b.pick("Captain Mara")
        a.send("Question from tab A", wait=False)
        b.send("Question from tab B", wait=False)
        a.wait_done(2)
        b.wait_done(2)
        assert [n for n, _ in a.replies()] == ["Byte", "Byte"]
        assert [n for n, _ in b.replies()] == ["Captain Mara", "Captain Mara"]
        expect(a.page.locator("#ch-transcript")).not_to_contain_text("tab B")
        expect(b.page.locator("#ch-transcript")).not_to_contain_text("tab A")
        expect(a.page.locator("#ch-active")).to_contain_text("Byte")
    finally:
        ctx_a.close()
        ctx_b.close()


def test_conversation_rename_and_delete_with_confirmation(chat_page):
    chat_page.set_sampling(max_new_tokens=6, seed=4)
    page = chat_page.page
    chat_page.send("A conversation to rename")
    page.locator("#ch-conv-manage").get_by_text("Rename or delete").click()
    page.locator("#ch-conv-title input, #ch-conv-title textarea").fill("Renamed chat")
    page.locator("#ch-conv-rename").click()
    expect(page.locator("#ch-convlist .ch-conv-on")).to_contain_text("Renamed chat")
    page.locator("#ch-conv-delete").click()
    expect(page.locator("#ch-conv-confirm").first).to_contain_text("Renamed chat")
    page.locator("#ch-conv-yes").click()
    expect(page.locator("#ch-convlist")).not_to_contain_text("Renamed chat")
    # back to a fresh chat with the persona's greeting
    expect(page.locator("#ch-transcript .ch-msg")).to_have_count(1)


def test_edit_a_user_message_as_a_new_branch(chat_page):
    chat_page.set_sampling(max_new_tokens=6, seed=9)
    page = chat_page.page
    chat_page.send("First wording")
    user = page.locator("#ch-transcript .ch-msg.ch-user").last
    user.hover()
    user.locator("[data-act=edit]").click()
    page.locator("#ch-edit-text textarea").fill("Second wording")
    page.locator("#ch-edit-resend").click()
    user = page.locator("#ch-transcript .ch-msg.ch-user").last
    expect(user.locator(".ch-swipe-pos")).to_have_text("2/2", timeout=60_000)
    chat_page.wait_done(2)
    expect(user.locator(".ch-body")).to_have_text("Second wording")
    user.locator("[data-act=prev]").click()
    expect(page.locator("#ch-transcript .ch-msg.ch-user").last.locator(".ch-body")).to_have_text("First wording")
