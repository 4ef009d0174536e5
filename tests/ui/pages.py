"""A small page object for the Chorus UI, so tests read as what a person does."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect


class ChatPage:
    def __init__(self, page: Page, url: str):
        self.page, self.url = page, url
        self.page.on("dialog", lambda d: d.accept())  # "delete this message?" confirmations

    def open(self) -> "ChatPage":
        self.page.goto(self.url)
        self.page.wait_for_selector("#ch-personas-list .ch-card", timeout=30_000)
        self.page.wait_for_selector("#ch-transcript .ch-msg, #ch-transcript .ch-placeholder", timeout=30_000)
        return self

    # settings --------------------------------------------------------------
    def set_sampling(self, max_new_tokens: int | None = None, seed: int | None = None, temperature: float | None = None):
        acc = self.page.locator("#ch-sampling")
        if not self.page.locator("#ch-max-new").is_visible():
            acc.get_by_text("Sampling settings").click()
        for elem, value in (("#ch-max-new", max_new_tokens), ("#ch-seed", seed), ("#ch-temperature", temperature)):
            if value is None:
                continue
            box = self.page.locator(f"{elem} input[type=number]")
            box.fill(str(value))
            box.press("Tab")
        return self

    # chatting --------------------------------------------------------------
    def pick(self, name: str):
        self.page.locator("#ch-personas-list .ch-card", has_text=name).click()
        # generous: on a loaded 2-core machine the page's queue may still be finishing a reply
        expect(self.page.locator("#ch-active .ch-active-name")).to_contain_text(name, timeout=30_000)

    def assistant_count(self) -> int:
        return self.page.locator("#ch-transcript .ch-msg.ch-assistant").count()

    def send(self, text: str, wait: bool = True, via: str = "enter"):
        """Send `text` as a person does: typed, lines joined with Shift+Enter, sent with
        Enter (the box's own promise); or, with via="click", filled in and sent with Send."""
        before = self.page.locator("#ch-transcript .ch-msg.ch-assistant .ch-tools").count()
        box = self.page.locator("#ch-input textarea")
        if via == "click":
            box.fill(text)
            self.page.locator("#ch-send").click()
        else:
            box.fill("")
            box.click()
            for n, line in enumerate(text.split("\n")):
                if n:
                    self.page.keyboard.press("Shift+Enter")
                self.page.keyboard.type(line)
            self.page.keyboard.press("Enter")
        if wait:
            self.wait_done(before + 1)

    def wait_done(self, finished: int, timeout: float = 90_000):
        """Wait until `finished` assistant replies carry their buttons and none is streaming."""
        self.page.wait_for_function(
            """n => document.querySelectorAll('#ch-transcript .ch-msg.ch-assistant .ch-tools').length >= n
                    && !document.querySelector('#ch-transcript .ch-streaming')""",
            arg=finished, timeout=timeout,
        )

    def replies(self) -> list[tuple[str, str]]:
        """(persona name, text) of every assistant message shown."""
        out = []
        for m in self.page.locator("#ch-transcript .ch-msg.ch-assistant").all():
            out.append((m.locator(".ch-who").inner_text(), m.locator(".ch-raw").input_value() if m.locator(".ch-raw").count() else m.locator(".ch-body").inner_text()))
        return out

    def last(self):
        return self.page.locator("#ch-transcript .ch-msg.ch-assistant").last

    def toast_text(self, timeout: float = 30_000) -> str:
        toast = self.page.locator(".toast-body").last
        toast.wait_for(timeout=timeout)
        return toast.inner_text()

    def watch_streaming(self, seconds: float = 20.0) -> list[str]:
        """The texts the streaming reply showed, sampled every 20 ms until it finished."""
        seen: list[str] = []
        end = time.time() + seconds
        self.page.wait_for_selector("#ch-transcript .ch-streaming", timeout=30_000)
        while time.time() < end:
            loc = self.page.locator("#ch-transcript .ch-streaming .ch-body")
            if not loc.count():
                break
            try:
                text = loc.inner_text(timeout=500)
            except Exception:
                break
            if not seen or seen[-1] != text:
                seen.append(text)
            time.sleep(0.02)
        return seen
