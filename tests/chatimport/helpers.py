"""Paths to the chat-export fixtures shared by the chat-import tests."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "chat-exports"
EDGE = FIXTURES / "edge"


def real(name: str) -> Path:
    return FIXTURES / name


def edge(name: str) -> Path:
    return EDGE / name
