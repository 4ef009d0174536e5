"""The blind "Which sounds like them?" comparison through TrainingService: pairs in a
stable random order, picks mapped from A/B to base/adapter, stored with the run (they
survive a restart), the result after all pairs; and the thin-voice warning."""

import pytest

from core.errors import ChorusError
from core.training.blind import BLIND_N, adapter_first, blind_pairs
from core.training.service import THIN_VOICE, TrainingService, thin_voice


def finished_run(store, n_pairs=12, **evaluation):
    """A finished run whose evaluation holds `n_pairs` voice-measure rows."""
    rows = [{"prompt": f"message {i}", "real": f"real {i}", "base": f"base {i}", "adapter": f"adapter {i}"} for i in range(n_pairs)]
    run = store.training.create(speaker="Mara", export_name="chat.txt", config={"persona": {"name": "Mara"}})
    store.training.update(run["id"], status="finished", evaluation={"voice": {"judged": True, "replies": rows}, **evaluation})
    return run["id"]


def which(text: str) -> str:
    return text.split()[0]  # "base 3" -> "base"


def test_picks_map_to_the_model_behind_each_side_and_survive_a_restart(store, tiny_model_dir):
    from core.model_source import ModelSource
    from storage.store import Store

    svc = TrainingService(store, model=ModelSource("tiny", tiny_model_dir))
    run_id = finished_run(store)
    state = svc.blind(run_id)
    assert state["total"] == BLIND_N and state["done"] == 0 and not state["finished"]
    sides = []
    for i in range(BLIND_N):
        cur = state["current"]
        assert cur["pair"] == i and cur["prompt"] == f"message {i}"
        assert {which(cur["a"]), which(cur["b"])} == {"base", "adapter"}
        sides.append(which(cur["a"]))
        # pick the adapter's reply on even pairs, the base's on pairs 1 and 3, neither after
        if i % 2 == 0:
            side = "a" if which(cur["a"]) == "adapter" else "b"
        elif i in (1, 3):
            side = "a" if which(cur["a"]) == "base" else "b"
        else:
            side = "neither"
        if i == 4:  # a restart half way: a new store and service over the same home
            store = Store(store.home)
            svc = TrainingService(store, model=ModelSource("tiny", tiny_model_dir))
            assert svc.blind(run_id)["done"] == 4
        state = svc.blind_pick(run_id, cur["pair"], side)
    assert "adapter" in sides and "base" in sides  # the order is random, not always the same side
    assert state["finished"] and state["current"] is None
    assert (state["adapter"], state["base"], state["neither"]) == (5, 2, 3)
    assert "adapter's reply in 5 of 10 pairs" in state["summary"]
    assert store.voice_picks.of_run(run_id)[0] == "adapter"
    # the order of a pair is stable (page refreshes, restarts)
    assert [adapter_first(run_id, i) for i in range(BLIND_N)] == [adapter_first(run_id, i) for i in range(BLIND_N)]


def test_blind_refuses_bad_picks_and_unfinished_runs(service, store):
    run_id = finished_run(store, n_pairs=3)
    assert service.blind(run_id)["total"] == 3  # fewer pairs than BLIND_N: all of them
    with pytest.raises(ChorusError, match="Pick one of"):
        service.blind_pick(run_id, 0, "left")
    with pytest.raises(ChorusError, match="no pair 3"):
        service.blind_pick(run_id, 3, "a")
    store.training.update(run_id, status="failed")
    with pytest.raises(ChorusError, match="finished"):
        service.blind(run_id)
    # deleting the run deletes its picks
    store.training.update(run_id, status="finished")
    service.blind_pick(run_id, 0, "neither")
    store.training.delete(run_id)
    assert store.voice_picks.of_run(run_id) == {}


def test_pairs_come_from_the_samples_without_a_voice_measure_and_skip_identical_replies():
    same = {"prompt": "p", "real": "r", "base": "hi", "adapter": " hi "}
    differ = {"prompt": "p", "real": "r", "base": "hi", "adapter": "ahoy"}
    assert blind_pairs({"voice": {"judged": False, "reason": "x"}, "samples": [same, differ]}) == [differ]
    assert blind_pairs({}) == []


def test_a_thin_export_is_flagged_before_the_run_and_kept_with_it(service, store, tmp_path, tiny_model_dir, capsys):
    import json
    from argparse import Namespace

    from core.training.cli import train_command
    from tests.training.conftest import tiny_config
    from tests.ui.test_training_ui import VOICE, telegram_export

    path = telegram_export(tmp_path / "result.json")
    info = service.inspect(path)
    rosa = next(s for s in info["speakers"] if s["name"] == VOICE)
    assert rosa["messages"] < THIN_VOICE and "voice may be thin" in rosa["thin"]
    config = json.dumps(tiny_config(max_steps=1, samples=0, voice_k=0))
    args = Namespace(export=str(path), speaker=VOICE, persona="Rosa", steps=None, rank=None, json=True,
                     model=str(tiny_model_dir), config=config)
    assert train_command(args) == 0
    out = capsys.readouterr()
    warning, started = out.err.index("voice may be thin"), out.err.index("Training ")
    assert warning < started  # said before the run is announced, on stderr only
    assert "voice may be thin" not in out.out
    run_id = json.loads(out.out.strip().splitlines()[-1])["run_id"]
    assert any("voice may be thin" in w for w in service.status(run_id)["warnings"])
    assert thin_voice("Mara", THIN_VOICE) is None and thin_voice("Mara", THIN_VOICE - 1)
