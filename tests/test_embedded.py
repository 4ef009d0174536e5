"""On the real embedded model in NF4: conversion, and personas with different adapters."""

import json

import pytest

from core.chat import ChatService
from core.device import model_device, pick_device
from core.engine import Engine, GenerationSettings
from core.model_source import EMBEDDED_NAME, ModelSource, resolve_model
from core.starter import seed_starters
from core.synthetic import make_random_adapter
from storage.store import Store

pytestmark = pytest.mark.embedded


def test_converted_folder_is_complete_and_reused(embedded_model_dir, chorus_home):
    names = {p.name for p in embedded_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chorus_model.json"} <= names
    assert not any(n.startswith(".") for n in names)
    cfg = json.loads((embedded_model_dir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg
    # A data folder that already holds the conversion is used as it is.
    target = chorus_home / "models" / EMBEDDED_NAME
    target.parent.mkdir(parents=True)
    target.symlink_to(embedded_model_dir)
    stamp = (target / "model.safetensors").stat().st_mtime
    source = resolve_model(None, chorus_home, progress=lambda m: pytest.fail(f"converted again: {m}"))
    assert source.path == target and (target / "model.safetensors").stat().st_mtime == stamp


@pytest.fixture(scope="module")
def embedded_engine(embedded_model_dir):
    return Engine.load(ModelSource(EMBEDDED_NAME, embedded_model_dir), max_resident=4)


def test_engine_loads_nf4_and_reports_its_footprint(embedded_engine):
    info = embedded_engine.info
    assert info.quantization.startswith("NF4") and info.device == pick_device()
    assert model_device(embedded_engine.model).type == info.device
    assert 80 < info.footprint_mb < 140  # about 0.41x of the 257 MB bf16 model
    assert type(embedded_engine.model.model.layers[5].mlp.down_proj).__name__ == "Linear4bit"


def test_two_adapters_answer_differently_and_switching_back_repeats(embedded_engine, embedded_model_dir, tmp_path):
    store = Store()
    seed_starters(store)
    chat = ChatService(store, embedded_engine)
    for pid, seed in (("captain-mara", 1), ("professor-quill", 2)):
        folder = make_random_adapter(embedded_model_dir, tmp_path / pid, seed=seed, rank=8, scale=0.3, base_name=EMBEDDED_NAME)
        chat.attach_adapter(pid, folder)

    def ask(pid):
        conv = chat.start_conversation()
        events = list(chat.send(conv["id"], pid, "Tell me about the sea.", GenerationSettings(temperature=0.7, max_new_tokens=24, seed=42)))
        return events[-1].message["content"]

    mara = ask("captain-mara")
    quill = ask("professor-quill")
    assert mara and quill and mara != quill
    assert ask("captain-mara") == mara
    assert ask("professor-quill") == quill
