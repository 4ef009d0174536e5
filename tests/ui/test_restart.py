"""A conversation reopens intact after the app restarts (a second `python app.py` on the same data)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_conversation_reopens_after_restart(browser, app_factory, tmp_path_factory):
    from tests.ui.pages import ChatPage

    home = tmp_path_factory.mktemp("restart-home")
    first = app_factory(home)
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    page = ChatPage(ctx.new_page(), first.url).open()
    page.set_sampling(max_new_tokens=10, seed=11)
    page.send("Before the restart")
    page.pick("Detective Vale")
    page.send("Still there, Vale?")
    before = page.replies()
    html_users = page.page.locator("#ch-transcript .ch-msg.ch-user .ch-body").all_inner_texts()
    ctx.close()
    first.stop()

    second = app_factory(home)
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    page = ChatPage(ctx.new_page(), second.url).open()
    conv = page.page.locator("#ch-convlist .ch-conv").first
    expect(conv).to_contain_text("Before the restart")
    expect(conv).to_contain_text("Detective Vale")
    conv.click()
    expect(page.page.locator("#ch-transcript .ch-msg.ch-user")).to_have_count(2)
    assert page.replies() == before
    assert [n for n, _ in before] == ["Byte", "Byte", "Detective Vale"]
    assert page.page.locator("#ch-transcript .ch-msg.ch-user .ch-body").all_inner_texts() == html_users
    assert "detective-vale" in page.last().locator("img.ch-av").get_attribute("src")
    # the persona who spoke last is active again, so the conversation can go on
    expect(page.page.locator("#ch-active")).to_contain_text("Detective Vale")
    ctx.close()
