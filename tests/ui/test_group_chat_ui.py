"""Group chats in real headless Chromium against `python app.py` with the tiny model: create a
group of three, send with real typing and Enter, three labelled replies, stop one reply while
the others go on, regenerate one, the mode control, and reopening after a restart."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

TRIO = ["Byte", "Captain Mara", "Juniper"]


def new_group(chat_page, names):
    page = chat_page.page
    page.locator("#ch-group-open").click()
    panel = page.locator("#ch-group-new").first
    expect(panel).to_be_visible()
    for name in names:
        panel.get_by_label(name, exact=True).check()
    page.locator("#ch-group-start").click()


def type_and_enter(page, text):
    box = page.locator("#ch-input textarea")
    box.click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_group_of_three_replies_stop_one_regenerate_and_reopen(browser, app_factory, tmp_path_factory):
    from tests.ui.pages import ChatPage

    home = tmp_path_factory.mktemp("group-home")
    first = app_factory(home)
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    chat_page = ChatPage(ctx.new_page(), first.url).open()
    page = chat_page.page

    # outside 2-8: a clear message, no group
    new_group(chat_page, ["Byte"])
    assert "2 to 8 personas; 1 picked" in chat_page.toast_text()
    page.locator("#ch-group-cancel").click()

    new_group(chat_page, TRIO)
    expect(page.locator("#ch-active")).to_contain_text("Group chat with Byte, Captain Mara, Juniper")
    mode = page.locator("#ch-mode input").first
    expect(mode).to_be_visible()
    expect(mode).to_have_value("In turn")  # the default

    # send: three labelled replies, in member order, each with its avatar
    chat_page.set_sampling(max_new_tokens=12, seed=5)
    type_and_enter(page, "Hello, crew!")
    chat_page.wait_done(3)
    assert [n for n, _ in chat_page.replies()] == TRIO
    assert all(t.strip() for _, t in chat_page.replies())
    avatars = page.locator("#ch-transcript .ch-msg.ch-assistant img.ch-av")
    assert "captain-mara" in avatars.nth(1).get_attribute("src")

    # stop one reply while the others go on: Byte writes a long reply, his Stop ends it,
    # and Mara and Juniper still answer
    chat_page.set_sampling(max_new_tokens=160, seed=6)
    type_and_enter(page, "Tell us a long story, one after another")
    live = page.locator("#ch-transcript .ch-live .ch-msg")
    expect(live).to_have_count(3, timeout=30_000)  # all three shown, two waiting their turn
    expect(live.nth(1).locator(".ch-tag-wait")).to_be_visible()
    page.wait_for_function(
        """() => { const m = document.querySelector('#ch-transcript .ch-live .ch-msg .ch-body');
                   return m && m.innerText.trim().length > 5; }""", timeout=60_000)
    page.locator("#ch-transcript .ch-live .ch-msg").first.locator("[data-act=stop-member]").click()
    chat_page.wait_done(6, timeout=180_000)
    last_three = page.locator("#ch-transcript .ch-msg.ch-assistant")
    assert [n for n, _ in chat_page.replies()][3:] == TRIO
    expect(last_three.nth(3).locator(".ch-tag-stop")).to_be_visible()  # Byte: stopped
    assert last_three.nth(4).locator(".ch-tag-stop").count() == 0  # Mara went on to her end
    assert last_three.nth(5).locator(".ch-tag-stop").count() == 0
    assert chat_page.replies()[4][1].strip() and chat_page.replies()[5][1].strip()

    # regenerate one (the last reply, Juniper's): a second version to swipe, same speaker
    chat_page.set_sampling(max_new_tokens=10, seed=7)
    old = chat_page.replies()[-1][1]
    chat_page.last().hover()
    chat_page.last().locator("[data-act=regen]").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("2/2", timeout=60_000)
    chat_page.wait_done(6)
    assert chat_page.replies()[-1][0] == "Juniper"
    chat_page.last().locator("[data-act=prev]").click()
    expect(chat_page.last().locator(".ch-swipe-pos")).to_have_text("1/2")
    assert chat_page.replies()[-1][1] == old

    # the mode control changes how the group replies, and is saved: everyone at once
    # streams the three replies side by side, then keeps them in member order
    mode.click()
    page.get_by_role("option", name="Everyone at once").click()
    expect(page.locator("#ch-active")).to_contain_text("everyone at once")
    chat_page.set_sampling(max_new_tokens=48, seed=9)
    type_and_enter(page, "All together now")
    expect(page.locator("#ch-transcript .ch-live-together .ch-msg")).to_have_count(3, timeout=30_000)
    chat_page.wait_done(9, timeout=120_000)
    assert [n for n, _ in chat_page.replies()][6:] == TRIO
    # only @mentioned: only Juniper answers
    mode.click()
    page.get_by_role("option", name="Only @mentioned").click()
    expect(page.locator("#ch-active")).to_contain_text("only @mentioned")
    chat_page.set_sampling(max_new_tokens=8, seed=8)
    type_and_enter(page, "@juniper what do you think?")
    chat_page.wait_done(10)
    assert [n for n, _ in chat_page.replies()][-1] == "Juniper" and len(chat_page.replies()) == 10

    before = chat_page.replies()
    ctx.close()
    first.stop()

    # reopen after a restart: members, mode and every labelled reply as they were
    second = app_factory(home)
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    chat_page = ChatPage(ctx.new_page(), second.url).open()
    page = chat_page.page
    conv = page.locator("#ch-convlist .ch-conv").first
    expect(conv).to_contain_text("Group: Byte, Captain Mara, Juniper")
    conv.click()
    expect(page.locator("#ch-active")).to_contain_text("Group chat with Byte, Captain Mara, Juniper")
    expect(page.locator("#ch-transcript .ch-msg.ch-user")).to_have_count(4)
    assert chat_page.replies() == before
    expect(page.locator("#ch-mode input").first).to_have_value("Only @mentioned")
    ctx.close()
