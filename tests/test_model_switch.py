"""Switching the served model while the app runs (core/runtime.py), on two tiny models
with different configs: a persona whose adapter belongs to the first answers from its card
with a note on the second, keeps its adapter, and uses it again back on the first; the
choice is remembered for the next start."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from core.engine import GenerationSettings
from core.errors import ChorusError
from core.model_catalog import CHOICE_FILE, cached_models, remember_model, remembered_model
from core.runtime import ModelLoading, Runtime, RuntimeOptions

GREEDY = GenerationSettings(temperature=0, max_new_tokens=8, seed=0)
PERSONA = "juniper"


def _reply(runtime: Runtime, text: str = "Tell me about the sea."):
    chat = runtime.chat
    conv = chat.start_conversation(None)["id"]
    events = list(chat.send(conv, PERSONA, text, GREEDY))
    done = events[-1]
    assert done.kind == "done"
    return done.message, [e.text for e in events if e.kind == "warning"]


def _switch(runtime: Runtime, spec) -> None:
    runtime.switch_model(str(spec)).join(120)
    assert runtime.ready and runtime.switching is None


def test_switch_keeps_the_adapter_for_its_base_and_answers_from_the_card_elsewhere(
        chorus_home, tiny_model_dir, other_tiny_model_dir, tiny_adapters):
    runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir)), chorus_home)
    runtime.load()
    first = runtime.chat.engine
    row = runtime.chat.attach_adapter(PERSONA, tiny_adapters["a"])
    on_a, warnings = _reply(runtime)
    assert warnings == [] and on_a["meta"]["adapter_sha256"] == row["sha256"]

    gone = weakref.ref(first)
    del first
    _switch(runtime, other_tiny_model_dir)
    gc.collect()
    assert gone() is None  # the old engine (and its model) was let go
    info = runtime.chat.engine.info
    assert info.name == "tiny-llama-b" and info.fingerprint != row["base_fingerprint"]
    on_b, warnings = _reply(runtime)
    note = "Juniper's adapter was trained on tiny-llama; answering from its card until tiny-llama is back."
    assert warnings == [note] and on_b["meta"]["warning"] == note
    assert on_b["meta"]["adapter_sha256"] is None
    assert runtime.store.personas.get(PERSONA)["adapter_id"] == row["id"]  # kept, not detached
    assert remembered_model(chorus_home) == str(other_tiny_model_dir)

    _switch(runtime, tiny_model_dir)
    back, warnings = _reply(runtime)
    assert warnings == [] and back["meta"]["adapter_sha256"] == row["sha256"]
    assert back["content"] == on_a["content"]  # the same model, adapter and greedy settings
    assert remembered_model(chorus_home) == str(tiny_model_dir)


def test_a_failed_switch_brings_the_previous_model_back(chorus_home, tiny_model_dir):
    runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir)), chorus_home)
    runtime.load()
    with pytest.raises(ChorusError, match="already the running model"):
        runtime.switch_model(str(tiny_model_dir))
    with pytest.raises(ChorusError, match="Name a model"):
        runtime.switch_model("  ")
    _switch(runtime, chorus_home / "no-such-model")
    assert runtime.error is None and runtime.chat.engine.info.name == "tiny-llama"
    assert "Could not switch to" in runtime.switch_error and "Still on tiny-llama" in runtime.switch_error
    assert not (chorus_home / CHOICE_FILE).exists()  # only a model that loaded is remembered
    _reply(runtime)  # and it still answers


def test_while_switching_chat_waits_and_training_queues(chorus_home, tiny_model_dir, other_tiny_model_dir, monkeypatch):
    import core.runtime as rt

    runtime = Runtime(RuntimeOptions(model=str(tiny_model_dir)), chorus_home)
    runtime.load()
    release = threading.Event()
    real_load = rt.Engine.load

    def slow_load(*args, **kwargs):
        release.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(rt.Engine, "load", slow_load)
    thread = runtime.switch_model(str(other_tiny_model_dir))
    try:
        assert not runtime.ready and runtime.switching == str(other_tiny_model_dir)
        with pytest.raises(ModelLoading, match="switching to"):
            runtime.chat
        with pytest.raises(ModelLoading, match="loading"):
            runtime.switch_model(str(tiny_model_dir))  # one switch at a time
        queued = runtime.start_training(export_path=str(chorus_home / "missing.txt"), speaker="x", consent=True)
        assert "waiting" in queued
    finally:
        release.set()
        thread.join(120)
    assert runtime.chat.engine.info.name == "tiny-llama-b"
    after = runtime.waiting_training(queued["waiting"])
    assert after["error"] and "missing.txt" in after["error"]  # it was started on the new model, and said why not
    assert runtime.training.model.name == "tiny-llama-b"  # new runs train on the new model


def test_the_catalog_lists_cached_models_and_the_choice_survives(chorus_home, other_tiny_model_dir, monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    (chorus_home / "models").mkdir()
    shutil.copytree(other_tiny_model_dir, chorus_home / "models" / "tiny-llama-b")
    (chorus_home / "models" / "half").mkdir()  # no config: not offered
    assert [(m.label.split(" ")[0], m.spec) for m in cached_models(chorus_home)] == \
        [("tiny-llama-b", str((chorus_home / "models" / "tiny-llama-b").resolve()))]
    assert remembered_model(chorus_home) is None
    remember_model(chorus_home, "org/name")
    assert remembered_model(chorus_home) == "org/name"
    remember_model(chorus_home, str(tmp_path / "gone"))
    assert remembered_model(chorus_home) is None  # a deleted folder is not started on
    (chorus_home / CHOICE_FILE).write_text("{not json")
    assert remembered_model(chorus_home) is None


def test_app_starts_on_the_remembered_model_unless_model_is_given(chorus_home, monkeypatch):
    import app

    seen = []
    monkeypatch.setattr(app, "cmd_page", lambda args: seen.append(("page", args.model)) or 0)
    monkeypatch.setattr(app, "cmd_serve", lambda args: seen.append(("serve", args.model)) or 0)
    remember_model(chorus_home, "org/remembered")
    assert app.main([]) == 0 and app.main(["--model", "org/given"]) == 0 and app.main(["serve"]) == 0
    assert seen == [("page", "org/remembered"), ("page", "org/given"), ("serve", "org/remembered")]
