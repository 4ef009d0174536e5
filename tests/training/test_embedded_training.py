"""On the embedded SmolLM2-135M: a short training on a fixture export lowers the held-out
loss of the speaker's replies (the proof the product promises), through the worker."""

import pytest

from tests.training.conftest import SHAREGPT


@pytest.mark.embedded
def test_short_training_lowers_heldout_loss(store, embedded_model_dir):
    from core.model_source import ModelSource
    from core.training.service import TrainingService

    svc = TrainingService(store, model=ModelSource("SmolLM2-135M-Instruct", embedded_model_dir))
    config = {"max_steps": 12, "batch_size": 4, "max_eval_examples": 12, "samples": 1, "sample_max_new_tokens": 24, "save_every": 100, "nice": 0}
    run_id = svc.start(SHAREGPT, "gpt", persona_name="Vicuna", consent=True, config=config)
    st = svc.wait(run_id, timeout=600)
    assert st["state"] == "finished", st["error"]
    before, after = st["evaluation"]["before"], st["evaluation"]["after"]
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["perplexity"] < before["perplexity"]
    evals = [loss for _, loss in st["history"]["eval"]]
    assert evals[0] == before["loss"] and min(evals[1:]) < evals[0]
