"""HTML and script in persona names, cards, messages, conversation titles and model output
are shown as text and never run, in real headless Chromium against `python app.py`.

The hostile persona and a conversation (whose assistant message stands for model output:
a random tiny model will not write `<script>` on request) are written to CHORUS_HOME
before the app starts; then the page is driven like a user and `window.__xss` must stay
undefined throughout."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from storage.store import Store
from tests.ui.conftest import AppProcess, browser, chromium_path  # noqa: F401  (fixtures)
from tests.ui.pages import ChatPage

pytestmark = pytest.mark.browser

NAME = 'Eve <img src=x onerror="window.__xss=1">'
SCRIPT = "<script>window.__xss=2</script>"
GREETING = 'Hi <img src=x onerror="window.__xss=3"> there ' + SCRIPT
USER = 'Look: <img src=x onerror="window.__xss=5"> <b onmouseover="window.__xss=6">hover</b>'
MODEL = ('<svg onload="window.__xss=7"></svg> <iframe src="javascript:window.__xss=8"></iframe> '
         '[click](javascript:window.__xss=9) <a href="javascript:window.__xss=10">a</a> ' + SCRIPT)
TITLE = '<img src=x onerror="window.__xss=11"> title'
DANGEROUS = "script, iframe, svg, img[src='x'], [onerror], [onload], [onmouseover], a[href^='javascript']"


def seed(home):
    store = Store(home)
    p = store.personas.create({"name": NAME, "tagline": SCRIPT, "description": SCRIPT, "greeting": GREETING,
                               "personality": SCRIPT, "scenario": SCRIPT}, persona_id="eve")
    conv = store.conversations.create(TITLE)
    user = store.conversations.add_message(conv["id"], "user", USER, parent_id=None)
    store.conversations.add_message(conv["id"], "assistant", MODEL, parent_id=user["id"], persona_id=p["id"], persona_name=NAME)


def no_script_ran(page):
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#ch-transcript, #ch-personas-list, #ch-convlist, #ch-active").locator(DANGEROUS).count() == 0


def test_html_everywhere_is_shown_as_text_and_never_runs(browser, tiny_model_dir, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    seed(home)
    app = AppProcess(home, tiny_model_dir).start()
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    try:
        chat = ChatPage(ctx.new_page(), app.url).open()
        page = chat.page
        # the persona list: the name and tagline as text
        card = page.locator("#ch-personas-list .ch-card", has_text=NAME)
        expect(card).to_have_count(1)
        expect(card).to_contain_text(SCRIPT)
        no_script_ran(page)
        # the saved conversation: title, user message and "model output" as text
        conv = page.locator("#ch-convlist .ch-conv", has_text=TITLE)
        expect(conv).to_have_count(1)
        conv.click()
        expect(page.locator("#ch-transcript .ch-msg.ch-user").last).to_contain_text('<img src=x onerror="window.__xss=5">')
        reply = page.locator("#ch-transcript .ch-msg.ch-assistant").last
        expect(reply).to_contain_text('<svg onload="window.__xss=7">')
        expect(reply).to_contain_text(SCRIPT)
        expect(reply.locator(".ch-who")).to_have_text(NAME)
        no_script_ran(page)
        # a new chat with the persona: its greeting as text; then the user types HTML
        card.click()
        expect(page.locator("#ch-active")).to_contain_text(NAME)
        page.locator("#ch-new, button:has-text('New chat')").first.click()
        expect(page.locator("#ch-transcript .ch-msg.ch-assistant").first).to_contain_text(GREETING.split(" there")[0])
        chat.set_sampling(max_new_tokens=8, seed=1)
        chat.send(USER.replace("=5", "=12"))
        expect(page.locator("#ch-transcript .ch-msg.ch-user").last).to_contain_text('onerror="window.__xss=12"')
        page.locator("#ch-transcript .ch-msg.ch-user b, #ch-transcript .ch-msg").last.hover()
        no_script_ran(page)
        # the persona editor: every field holds the text as typed
        page.locator("#tab-personas-button, button[role=tab]:has-text('Personas')").first.click()
        page.locator("#pe-pick input").first.click()
        page.get_by_role("option", name=NAME).click()
        expect(page.locator("#pe-name textarea, #pe-name input").first).to_have_value(NAME)
        expect(page.locator("#pe-description textarea").first).to_have_value(SCRIPT)
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("img[src='x'], [onerror]").count() == 0
    finally:
        ctx.close()
        app.stop()
