"""Fixtures for the training tests: a training service on the tiny model and tiny configs."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "chat-exports"
SHAREGPT = FIXTURES / "sharegpt__lm-sys_FastChat__dummy_conversation.excerpt120.json"
TOO_SHORT = FIXTURES / "whatsapp__Pustur_whatsapp-chat-parser-website__old_example__chat.txt"


def tiny_config(**over) -> dict:
    """Small enough for a few seconds per run on the tiny model, even on a busy CPU."""
    cfg = dict(batch_size=2, max_seq_len=64, max_steps=4, samples=1, sample_max_new_tokens=4, max_eval_examples=4, nice=0)
    cfg.update(over)
    return cfg


@pytest.fixture
def store(chorus_home):
    from storage.store import Store

    return Store()


@pytest.fixture
def service(store, tiny_model_dir):
    from core.model_source import ModelSource
    from core.training.service import TrainingService

    return TrainingService(store, model=ModelSource("tiny-llama", tiny_model_dir))
