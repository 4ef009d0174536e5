"""Retake the screenshots in README.md and docs/ui.md with the embedded model.

    .venv/bin/python docs/screenshots.py [--out docs/screenshots]

Starts `python app.py` on a free port with a fresh CHORUS_HOME and the embedded
SmolLM2-135M-Instruct (converted once, cached like the tests' copy), chats in headless
Chromium exactly as tests/ui/test_screenshots.py does (typed text, real Enter presses, a
regenerated reply, a persona switch, a group chat of three), and writes chat.png,
group-chat.png, conversations.png and persona-editor.png. The replies are the embedded
model's own. The Train tab's picture comes from tests/ui/test_training_ui.py. Progress goes
to stderr; stdout prints the files written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def embedded_model() -> Path:
    """The embedded model as a safetensors folder, converted once into the tests' cache."""
    from core.model_source import EMBEDDED_NAME, convert_gguf, find_embedded_gguf
    from tests.conftest import CACHE, _locked_build

    return _locked_build(CACHE / EMBEDDED_NAME, lambda dest: convert_gguf(find_embedded_gguf(), dest))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNG files")
    parser.add_argument("--max-new-tokens", type=int, default=60, help="length of each reply")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from tests.ui.conftest import CHROMIUM_ARGS, AppProcess
    from tests.ui.pages import ChatPage
    from tests.ui.test_screenshots import SHOTS, take_screenshots

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("error: Debian's chromium is needed (apt-get install chromium)", file=sys.stderr)
        return 2
    model = embedded_model()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chorus-shots-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        app = AppProcess(home, model)
        print(f"Starting app.py with {model.name}...", file=sys.stderr)
        app.start(timeout=300)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1400, "height": 950})
                page = ChatPage(context.new_page(), app.url).open()
                print("Chatting and taking the screenshots...", file=sys.stderr)
                take_screenshots(page, args.out, max_new_tokens=args.max_new_tokens)
                browser.close()
        finally:
            app.stop()
    for name in SHOTS:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
