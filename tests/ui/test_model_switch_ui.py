"""Switching the model from the page, in real headless Chromium against `python app.py`:
pick a cached model from the list with clicks, then type a folder and press Enter; the
status line follows, chat answers from the card (with the note) where the persona's adapter
belongs to the other base, and from its adapter again once that base is back."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def switch_app(app_factory, tmp_path_factory, other_tiny_model_dir, tiny_adapters):
    """An app on the tiny model whose Juniper has an adapter for it, with a second tiny
    model of another shape in $CHORUS_HOME/models."""
    from core.adapters import inspect_adapter
    from core.starter import seed_starters
    from storage.store import Store

    home = tmp_path_factory.mktemp("chorus-switch-home")
    store = Store(home)
    seed_starters(store)
    store.adapters.add_version("juniper", tiny_adapters["a"], inspect_adapter(tiny_adapters["a"]).store_meta())
    shutil.copytree(other_tiny_model_dir, home / "models" / "tiny-llama-b")
    return app_factory(home=home)


def _last_warning(chat) -> str:
    warn = chat.last().locator(".ch-warn")
    return warn.inner_text() if warn.count() else ""


def test_switch_from_the_list_and_back_by_name(browser, switch_app, tiny_model_dir):
    from tests.ui.pages import ChatPage

    context = browser.new_context(viewport={"width": 1400, "height": 950})
    chat = ChatPage(context.new_page(), switch_app.url).open()
    page = chat.page
    status = page.locator("#ch-status")
    expect(status).to_contain_text("tiny-llama ·", timeout=10_000)
    expect(status).to_contain_text("family llama")
    chat.pick("Juniper")
    chat.set_sampling(max_new_tokens=6, seed=1, temperature=0)
    chat.send("Hello there")
    assert _last_warning(chat) == ""

    page.locator("#ch-model").get_by_text("Model", exact=True).click()
    page.locator("#ch-model-pick input").first.click()
    page.get_by_role("option", name="tiny-llama-b", exact=False).click()
    page.locator("#ch-model-switch").click()
    expect(page.locator("#ch-model-note")).to_contain_text("started in the background", timeout=10_000)
    expect(status).to_contain_text("tiny-llama-b ·", timeout=60_000)
    chat.send("Hello again")
    expect(chat.last().locator(".ch-warn")).to_contain_text(
        "trained on tiny-llama; answering from its card until tiny-llama is back")

    box = page.locator("#ch-model-name input, #ch-model-name textarea").first
    box.click()
    page.keyboard.type(str(tiny_model_dir))
    page.keyboard.press("Enter")
    expect(status).not_to_contain_text("tiny-llama-b", timeout=60_000)
    expect(status).to_contain_text("tiny-llama ·", timeout=60_000)
    chat.send("And once more")
    assert _last_warning(chat) == ""
    assert (switch_app.home / "model.json").read_text().find(str(tiny_model_dir)) >= 0
    context.close()
