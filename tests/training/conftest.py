"""Fixtures for the training tests: a training service on the tiny model and tiny configs."""

import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "chat-exports"
# A ShareGPT export whose "gpt" never repeats a reply (bench/train_synth_export.py --sharegpt):
# FastChat's dummy conversation repeats 16 replies 240 times, so its honest held-out set is empty.
SHAREGPT = FIXTURES / "sharegpt__chorus_synthetic_pirate.json"
REPEATING = FIXTURES / "sharegpt__lm-sys_FastChat__dummy_conversation.excerpt120.json"
TOO_SHORT = FIXTURES / "whatsapp__Pustur_whatsapp-chat-parser-website__old_example__chat.txt"


def wait_for(cond, timeout=240, what="condition"):
    """Poll `cond()` until it returns something true (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
