"""The Train tab in real headless Chromium: upload an export, pick the voice, train on the
tiny model, watch progress and the loss plot, see the evaluation, chat with the result;
cancel and resume a second run. Speaker names from the export are hostile HTML."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

VOICE = '<img src=x onerror="window.__xss=1">Rosa'
OTHER = "Tom"


def telegram_export(path, days: int = 12):
    """A Telegram Desktop single-chat export: Tom asks, the hostile-named speaker answers
    (and has the most messages, so the page picks her first)."""
    messages, t, n = [], datetime(2024, 3, 1, 9, 0), 0
    for day in range(days):
        t = datetime(2024, 3, 1 + day, 9, 0)
        for turn in range(4):
            for who, text in ((OTHER, f"how was day {day}, part {turn}?"), (VOICE, f"oh lovely, the garden again ({day}.{turn}) <b>x</b>")):
                n += 1
                t += timedelta(minutes=2)
                messages.append({"id": n, "type": "message", "date": t.isoformat(), "from": who,
                                 "from_id": f"user{1 if who == OTHER else 2}", "text": text})
        n += 1
        messages.append({"id": n, "type": "message", "date": (t + timedelta(minutes=1)).isoformat(), "from": VOICE,
                         "from_id": "user2", "text": "and the roses are out"})
    path.write_text(json.dumps({"name": "Rosa", "type": "personal_chat", "id": 42, "messages": messages}), encoding="utf-8")
    return path


def _open_train(page):
    page.locator("button[role=tab]:has-text('Train')").first.click()
    expect(page.locator("#tr-export")).to_be_visible()


def _upload(page, path):
    page.locator("#tr-export input[type=file]").set_input_files(str(path))
    expect(page.locator("#tr-summary")).to_contain_text("Telegram", timeout=30_000)


def _number(page, key, value):
    box = page.locator(f"#tr-{key} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def _settings(page, steps):
    if not page.locator("#tr-max_steps").is_visible():
        page.locator("#tr-advanced").get_by_text("Advanced settings").click()
    expect(page.locator("#tr-max_steps input[type=number]")).to_be_visible()
    page.wait_for_timeout(300)  # the fold's inputs are re-rendered once as it opens
    _number(page, "max_steps", steps)
    _number(page, "batch_size", 2)
    _number(page, "max_seq_len", 64)


def _state(page) -> str:
    return page.locator("#tr-progress .tr-run").get_attribute("data-state") or ""


def test_train_watch_evaluate_and_chat(chat_page, tmp_path):
    page = chat_page.page
    _open_train(page)
    _upload(page, telegram_export(tmp_path / "result.json"))

    # the hostile name is shown as text everywhere and never runs
    expect(page.locator("#tr-summary")).to_contain_text(VOICE)
    assert page.locator("#tr-summary img").count() == 0
    expect(page.locator("#tr-name input, #tr-name textarea").first).to_have_value(VOICE)
    page.locator("#tr-name input, #tr-name textarea").first.fill("Rosa")
    expect(page.locator("#tr-greeting textarea")).not_to_have_value("")
    _settings(page, steps=4)

    page.locator("#tr-train").click()  # no consent yet
    expect(page.locator(".toast-body", has_text="consent").last).to_be_visible(timeout=10_000)
    assert page.locator("#tr-progress .tr-run").count() == 0

    page.locator("#tr-consent input").check()
    page.locator("#tr-train").click()
    expect(page.locator("#tr-progress .tr-run")).to_be_visible(timeout=20_000)
    expect(page.locator("#tr-progress .tr-run[data-state=finished]")).to_have_count(1, timeout=240_000)

    expect(page.locator("#tr-progress .tr-fill")).to_have_attribute("style", "width:100.0%")
    expect(page.locator("#tr-progress")).to_contain_text("step 4 of 4")  # the advanced settings were used
    plot = page.locator("#tr-plot")
    expect(plot.locator(".mark-line path")).to_have_count(2)  # the training and the held-out curve, drawn
    expect(plot.locator(".role-legend")).to_contain_text("held-out")
    expect(plot.locator(".role-legend")).to_contain_text("training")
    ev = page.locator("#tr-eval")
    expect(ev).to_contain_text("Held-out evaluation")
    expect(ev).to_contain_text("With the adapter")
    expect(ev.locator(".tr-sample").first).to_be_visible()
    expect(page.locator("#tr-runs tr[data-run]")).to_have_count(1)
    expect(page.locator("#tr-runs")).to_contain_text("Finished")
    assert page.evaluate("window.__xss") is None
    assert "Traceback" not in page.content()
    if os.environ.get("CHORUS_UPDATE_SCREENSHOTS") == "1":
        from tests.ui.test_screenshots import DOCS

        page.wait_for_timeout(1000)
        page.screenshot(path=str(DOCS / "train.png"), full_page=True)

    # the new persona is live without a restart
    page.locator("#tr-chat").click()
    expect(page.locator("#ch-active .ch-active-name")).to_contain_text("Rosa", timeout=10_000)
    card = page.locator("#ch-personas-list .ch-card", has_text="Rosa")
    expect(card.locator(".ch-tag-lora")).to_have_count(1)
    chat_page.set_sampling(max_new_tokens=6, seed=1)
    chat_page.send("how was the garden?")
    who, _ = chat_page.replies()[-1]
    assert who == "Rosa"
    expect(page.locator("#ch-status")).to_contain_text("Rosa", timeout=10_000)  # resident adapter

    page.locator("button[role=tab]:has-text('Personas')").first.click()  # the editor lists it too
    page.locator("#pe-pick input").first.click()
    page.get_by_role("option", name="Rosa", exact=True).click()
    expect(page.locator("#pe-adapter-info")).to_contain_text("version 1")


def test_cancel_then_resume(chat_page, tmp_path):
    page = chat_page.page
    _open_train(page)
    _upload(page, telegram_export(tmp_path / "result.json", days=16))
    page.locator("#tr-name input, #tr-name textarea").first.fill("Rosa Long")
    _settings(page, steps=3000)
    page.locator("#tr-consent input").check()
    page.locator("#tr-train").click()
    page.wait_for_function(
        "() => { const r = document.querySelector('#tr-progress .tr-run');"
        " return r && r.dataset.state === 'running' && /step [1-9]/.test(r.textContent); }",
        timeout=180_000,
    )
    page.locator("#tr-cancel").click()
    expect(page.locator("#tr-progress .tr-run[data-state=cancelled]")).to_have_count(1, timeout=60_000)
    expect(page.locator("#tr-progress")).to_contain_text("No adapter was written")
    expect(page.locator("#tr-cancel")).to_be_hidden()
    resume = page.locator("#tr-resume")
    expect(resume).to_be_visible()

    resume.click()
    expect(page.locator("#tr-progress .tr-run[data-state=running]")).to_have_count(1, timeout=60_000)
    page.locator("#tr-cancel").click()  # end the test's run quickly
    expect(page.locator("#tr-progress .tr-run[data-state=cancelled]")).to_have_count(1, timeout=60_000)
    expect(page.locator("#ch-personas-list .ch-card", has_text="Rosa Long")).to_have_count(0)  # nothing half-made
