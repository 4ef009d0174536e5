"""The blind "Which sounds like them?" panel in real headless Chromium: a finished run's
pairs, judged with real clicks on Reply A / Reply B / Neither; the result after ten
picks; the picks stay with the run across a page reload and an app restart. The held-out
message is hostile HTML."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

EVIL = '<img src=x onerror="window.__xss=1">'


def seed_finished_run(home):
    """A finished run in a fresh home, as the worker leaves it: evaluation with the voice
    measure's replies (12 pairs: the panel asks about 10)."""
    from storage.store import Store

    store = Store(home)
    rows = [{"prompt": f"{EVIL} message {i}", "real": f"real {i}", "base": f"plain reply {i}", "adapter": f"arr matey {i}"}
            for i in range(12)]
    run = store.training.create(speaker="Mara", export_name="chat.txt", config={"persona": {"name": "Mara"}})
    voice = {"judged": True, "k": 12, "voice_match_base": 0.1, "voice_match_adapter": 0.6, "voice_match_real": 0.9,
             "voice_match_base_ci": [0.02, 0.35], "voice_match_adapter_ci": [0.35, 0.8], "voice_match_real_ci": [0.65, 0.98],
             "summary": "Voice match: adapter 60%.", "features": [{"text": "uses 'arr' 6x more"}], "replies": rows}
    evaluation = {"before": {"loss": 3.0, "perplexity": 20.1, "examples": 12},
                  "after": {"loss": 2.0, "perplexity": 7.4, "examples": 12}, "voice": voice, "samples": rows[:2],
                  "kept_step": 8}
    store.training.update(run["id"], status="finished", step=10, total_steps=10, evaluation=evaluation)
    return run["id"]


def _open(app_url, browser):
    from tests.ui.pages import ChatPage

    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = ChatPage(context.new_page(), app_url).open().page
    page.locator("button[role=tab]:has-text('Train')").first.click()
    expect(page.locator("#tr-blind .tr-blind")).to_be_visible(timeout=20_000)
    return context, page


def test_blind_picks_with_clicks_then_the_result_survives_a_restart(app_factory, browser, tmp_path_factory):
    from storage.store import Store

    home = tmp_path_factory.mktemp("blind-home")
    run_id = seed_finished_run(home)
    app = app_factory(home)
    context, page = _open(app.url, browser)
    ev = page.locator("#tr-eval")
    expect(ev.locator("tr[data-voice=adapter]")).to_contain_text("60%")  # the voice match beside perplexity
    expect(ev).to_contain_text("Kept step 8 of 10")

    blind = page.locator("#tr-blind")
    for i in range(10):
        expect(blind).to_contain_text(f"Pair {i + 1} of 10")
        a = blind.locator(".tr-reply-a").inner_text()
        if i < 7:  # the adapter's reply, wherever it is
            page.locator("#tr-blind-a" if "arr matey" in a else "#tr-blind-b").click()
        elif i < 9:  # the base's
            page.locator("#tr-blind-b" if "arr matey" in a else "#tr-blind-a").click()
        else:
            page.locator("#tr-blind-neither").click()
    result = blind.locator(".tr-blind-result")
    expect(result).to_contain_text("adapter's reply in 7 of 10 pairs, the base model's in 2, neither in 1")
    expect(page.locator("#tr-blind-buttons")).to_be_hidden()
    assert blind.locator("img").count() == 0 and page.evaluate("window.__xss") is None
    context.close()

    picks = Store(home).voice_picks.of_run(run_id)
    assert list(picks.values()).count("adapter") == 7 and len(picks) == 10

    app.stop()  # a restart: the picks are in the database, not the page
    app2 = app_factory(home)
    context, page = _open(app2.url, browser)
    expect(page.locator("#tr-blind .tr-blind-result")).to_contain_text("7 of 10")
    context.close()
