"""Fixtures for the reliability suite: one shared tiny engine that holds only 3 adapters at
once (so 8 personas keep evicting each other), 8 random adapters, and stores seeded with
the same 8 personas so that a reply can be compared with the one a persona gives alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.chat import ChatService
from storage.store import Store

N_PERSONAS = 8
MAX_RESIDENT = 3


@pytest.fixture(scope="session")
def eight_adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    from core.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("eight-adapters")
    return [make_random_adapter(tiny_model_dir, root / f"p{i}", seed=100 + i, rank=4) for i in range(N_PERSONAS)]


@pytest.fixture(scope="session")
def small_engine(tiny_engine_factory):
    """One engine for the whole suite (loading costs seconds); tests must not assume what is resident."""
    return tiny_engine_factory(max_resident=MAX_RESIDENT)


def persona_fields(i: int) -> dict:
    return {"name": f"Voice {i}", "description": f"Persona number {i}.", "greeting": f"Hello, I am voice {i}."}


def seeded_chat(home: Path, engine, adapters: list[Path]) -> ChatService:
    """A ChatService on a fresh store holding personas voice-0..voice-7, each with its adapter."""
    store = Store(home)
    chat = ChatService(store, engine)
    for i, folder in enumerate(adapters):
        store.personas.create(persona_fields(i), persona_id=f"voice-{i}")
        chat.attach_adapter(f"voice-{i}", folder)
    return chat


@pytest.fixture
def chat8(small_engine, eight_adapters, tmp_path) -> ChatService:
    return seeded_chat(tmp_path / "home", small_engine, eight_adapters)
