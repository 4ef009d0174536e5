"""Chat-export import: read WhatsApp, Telegram, Discord, Messenger, Signal, iMessage and
LLM-chat files into one conversation model, and turn one speaker's voice into training
examples. `load_export` reads, `build_examples` builds, `cli.inspect_command` reports.
"""

from .examples import ExampleSet, build_examples
from .loader import load_export
from .model import Conversation, ImportResult, Message

__all__ = ["load_export", "build_examples", "ExampleSet", "ImportResult", "Conversation", "Message"]
