"""Train pressed while the model loads (issue 18, item 11): the run is queued, the Train
tab says it waits for the model, and it starts by itself once the model is ready. The
load is held back by an Event, so the "while loading" moment is certain."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from core.training.config import ADVANCED, TrainConfig
from tests.training.conftest import SHAREGPT, tiny_config, wait_for


def _held_runtime(tiny_model_dir, monkeypatch):
    """A Runtime whose model load waits for `release.set()`."""
    from core import runtime as rt

    release = threading.Event()
    real = rt.Engine.load.__func__

    def held(cls, *args, **kwargs):
        assert release.wait(120), "the test never released the load"
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(rt.Engine, "load", classmethod(held))
    runtime = rt.Runtime(rt.RuntimeOptions(model=str(tiny_model_dir)))
    thread = runtime.load_in_background()
    return runtime, release, thread


def _view(runtime):
    from ui.training_view import TrainingView

    return TrainingView(runtime, SimpleNamespace(), SimpleNamespace())


def _press_train(view, tstate, **over):
    from ui.cards_view import NEW

    cfg = {**tiny_config(max_steps=2), **over}
    advanced = [cfg.get(k, getattr(TrainConfig(), k)) for k in ADVANCED]
    return view.start({"path": str(SHAREGPT)}, "gpt", NEW, "Vicuna", "", True, tstate, *advanced)


def _progress(view, tstate):
    out = view.refresh(tstate, None)
    return out[0], out[1], out[4]  # tstate, the progress HTML, the Cancel button's update


def test_train_while_loading_waits_then_starts_when_the_model_is_ready(chorus_home, tiny_model_dir, monkeypatch):
    from core.runtime import ModelLoading
    from ui.training_view import new_state

    runtime, release, thread = _held_runtime(tiny_model_dir, monkeypatch)
    view = _view(runtime)
    with pytest.raises(ModelLoading) as err:
        runtime.training
    assert "training can start once it is ready" in str(err.value) and "message" not in str(err.value)

    tstate = _press_train(view, new_state())
    assert tstate["waiting"] and tstate["run"] is None
    tstate, progress, cancel = _progress(view, tstate)
    assert 'data-state="waiting"' in progress and "Waiting for the model to load" in progress
    assert "message" not in progress.lower()  # no chat wording in the Train tab
    assert cancel["visible"] is True
    assert runtime.store.training.list() == []  # nothing started yet

    release.set()
    thread.join(120)
    run_id = wait_for(lambda: runtime.waiting_training(tstate["waiting"])["run"], 60, "the queued run to start")
    tstate, progress, _ = _progress(view, tstate)
    assert tstate["run"] == run_id and tstate["waiting"] is None
    assert 'data-state="waiting"' not in progress and "tr-run" in progress
    st = runtime.training.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    assert st["persona_name"] == "Vicuna" and st["total_steps"] == 2


def test_waiting_run_refuses_a_second_one_and_can_be_cancelled(chorus_home, tiny_model_dir, monkeypatch):
    from ui.training_view import new_state

    runtime, release, thread = _held_runtime(tiny_model_dir, monkeypatch)
    view = _view(runtime)
    with pytest.raises(gr.Error, match="learning rate"):  # a bad setting is said at once, not after the load
        _press_train(view, new_state(), learning_rate=5)
    tstate = _press_train(view, new_state())
    with pytest.raises(gr.Error, match="already waiting for the model to load"):
        _press_train(view, new_state())
    view.cancel(tstate)
    tstate, progress, cancel = _progress(view, tstate)
    assert "Waiting" not in progress and cancel["visible"] is False

    release.set()
    thread.join(120)
    time.sleep(0.5)
    assert runtime.store.training.list() == []  # the cancelled request never started
    assert runtime.waiting_training(tstate["waiting"])["run"] is None


def test_a_failed_load_tells_the_waiting_run_why_it_did_not_start(chorus_home, tiny_model_dir, monkeypatch):
    from core import runtime as rt
    from ui.training_render import waiting_html
    from ui.training_view import new_state

    release = threading.Event()

    def broken(cls, *args, **kwargs):
        release.wait(60)
        raise RuntimeError("no memory")

    monkeypatch.setattr(rt.Engine, "load", classmethod(broken))
    runtime = rt.Runtime(rt.RuntimeOptions(model=str(tiny_model_dir)))
    thread = runtime.load_in_background()
    tstate = _press_train(_view(runtime), new_state())
    release.set()
    thread.join(60)
    w = runtime.waiting_training(tstate["waiting"])
    assert w["run"] is None and "Training did not start" in w["error"] and "no memory" in w["error"]
    html = waiting_html(w)
    assert 'data-state="not-started"' in html and "no memory" in html
