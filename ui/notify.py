"""Messages for the user as Gradio toasts. Toasts render HTML, and these messages can
quote persona names or file names, so the text is escaped: it shows, it never runs."""

from __future__ import annotations

import gradio as gr

from ui.render import esc


def error(message) -> gr.Error:
    """A `gr.Error` to raise: `raise notify.error(exc) from None`."""
    return gr.Error(esc(str(message)))


def info(message: str) -> None:
    gr.Info(esc(message))


def warning(message: str) -> None:
    gr.Warning(esc(message))
