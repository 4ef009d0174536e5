"""The whole pipeline on the tiny model, through the service and a real worker process:
finish and register, hot-load into a running engine, cancel, kill -9 and resume, the CLI."""

import json
import os
import signal
from argparse import Namespace
from pathlib import Path

import pytest

from core.errors import ChorusError, ExportInvalid
from core.training.service import TrainingBusy, TrainingService
from tests.training.conftest import SHAREGPT, TOO_SHORT, tiny_config, wait_for

ADAPTER_FILES = [
    "README.md", "adapter_config.json", "adapter_model.safetensors", "chorus_adapter.json",
    "evaluation.json", "training_config.json", "training_log.jsonl",
]


def _adapter_tree(home):
    root = home / "adapters"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_training_finishes_registers_and_hot_loads(store, tiny_model_dir, tiny_engine, chorus_home):
    from core.chat import ChatService
    from core.engine import GenerationSettings

    svc = TrainingService(store, tiny_engine)
    svc.mark_seen()
    info = svc.inspect(SHAREGPT)
    assert info["format"] == "sharegpt" and [s["name"] for s in info["speakers"]] == ["gpt", "human"]
    assert info["speakers"][0]["card"]["greeting"]
    run_id = svc.start(SHAREGPT, "GPT", persona_name="Vicuna", card=info["speakers"][0]["card"], consent=True, config=tiny_config())
    with pytest.raises(TrainingBusy):
        svc.start(SHAREGPT, "gpt", persona_name="Other", consent=True, config=tiny_config())
    st = svc.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    assert st["step"] == st["total_steps"] == 4 and st["fraction"] == 1.0
    assert len(st["history"]["train"]) == 4 and st["history"]["eval"][0][0] == 0
    ev = st["evaluation"]
    assert ev["before"]["loss"] > 0 and ev["after"]["loss"] > 0 and ev["before"]["tokens"] == ev["after"]["tokens"] > 0
    assert set(ev["samples"][0]) == {"prompt", "real", "base", "adapter"}

    persona = store.personas.get(st["persona_id"])
    assert persona["name"] == "Vicuna" and persona["greeting"] == info["speakers"][0]["card"]["greeting"]
    adapter = store.adapters.get(persona["adapter_id"])
    folder = store.adapters.folder(adapter)
    assert sorted(p.name for p in folder.iterdir()) == ADAPTER_FILES
    meta = json.loads((folder / "chorus_adapter.json").read_text())
    assert meta["base_fingerprint"] == tiny_engine.info.fingerprint and meta["vocab_size"] == tiny_engine.info.vocab_size
    cfg = json.loads((folder / "training_config.json").read_text())
    assert cfg["config"]["max_steps"] == 4 and cfg["plan"]["steps"] == 4 and cfg["speaker"] == "gpt"
    assert _adapter_tree(chorus_home) == [persona["id"], f"{persona['id']}/v1", *[f"{persona['id']}/v1/{f}" for f in ADAPTER_FILES]]
    assert not (chorus_home / "training" / run_id / "checkpoints").exists()

    finished = svc.poll()  # the serving process loads the new adapter without a restart
    assert [r["id"] for r in finished] == [run_id]
    assert persona["id"] in tiny_engine.resident()
    chat = ChatService(store, tiny_engine)
    conv = chat.start_conversation(persona["id"])
    events = list(chat.send(conv["id"], persona["id"], "Who are you?", GenerationSettings(max_new_tokens=4, seed=1)))
    assert events[-1].message["meta"]["adapter_sha256"] == adapter["sha256"]
    assert svc.poll() == []

    # a second run into the same persona keeps v1 and adds v2
    run2 = svc.start(SHAREGPT, "gpt", persona_id=persona["id"], consent=True, config=tiny_config(max_steps=2, samples=0))
    assert svc.wait(run2, timeout=300)["state"] == "finished"
    assert [v["version"] for v in store.adapters.versions(persona["id"])] == [1, 2]
    assert [r["id"] for r in svc.runs()] == [run2, run_id]


def test_bad_requests_fail_before_any_process_starts(service):
    with pytest.raises(ChorusError, match="Confirm"):
        service.start(SHAREGPT, "gpt", persona_name="X", config=tiny_config())
    with pytest.raises(ExportInvalid, match="never writes"):
        service.start(SHAREGPT, "nobody", persona_name="X", consent=True)
    with pytest.raises(ExportInvalid, match="needs at least"):
        service.start(TOO_SHORT, "Loris", persona_name="X", consent=True)
    with pytest.raises(ChorusError, match="learning rate"):
        service.start(SHAREGPT, "gpt", persona_name="X", consent=True, config={"learning_rate": 5})
    assert service.runs() == []


def test_cancel_stops_within_a_step_and_writes_no_adapter(service, store, chorus_home):
    run_id = service.start(SHAREGPT, "gpt", persona_name="Never", consent=True, config=tiny_config(max_steps=400, save_every=3))
    wait_for(lambda: service.status(run_id)["step"] >= 2, what="step 2")
    at_cancel = service.status(run_id)["step"]
    assert service.cancel(run_id)["state"] in ("cancelling", "cancelled")
    st = service.wait(run_id, timeout=120)
    assert st["state"] == "cancelled" and st["resumable"]
    assert st["step"] <= at_cancel + 2  # the step under way, plus one the poll may not have seen
    assert st["adapter_id"] is None and store.personas.list() == []
    assert _adapter_tree(chorus_home) == []


def test_killed_run_resumes_from_its_checkpoint(service, store, chorus_home):
    run_id = service.start(SHAREGPT, "gpt", persona_name="Phoenix", consent=True, config=tiny_config(max_steps=60, save_every=4, samples=0))
    ckpts = chorus_home / "training" / run_id / "checkpoints"
    wait_for(lambda: (ckpts / "checkpoint-4" / "chorus_complete").is_file(), what="the first checkpoint")
    wait_for(lambda: service.status(run_id)["step"] >= 5, what="step 5")
    pid = store.training.get(run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    st = service.wait(run_id, timeout=60)
    assert st["state"] == "failed" and "unexpectedly" in st["error"] and st["resumable"]
    assert st["step"] < 60
    # nothing half-written was registered: no persona, no adapter folder
    assert store.personas.list() == [] and _adapter_tree(chorus_home) == []
    last_ckpt = max(int(p.name.split("-")[1]) for p in ckpts.iterdir() if (p / "chorus_complete").is_file())

    service.resume(run_id)
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    assert st["step"] == 60 and st["result"]["resumed_from"] == last_ckpt
    steps = [s for s, _ in st["history"]["train"]]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # replayed steps are not counted twice
    assert st["persona_id"] and st["evaluation"]["after"]["loss"] > 0


def test_cli_json(store, tiny_model_dir, capsys):
    from core.training.cli import train_command

    config = json.dumps(tiny_config())
    args = Namespace(export=str(SHAREGPT), speaker="gpt", persona="Vicuna", steps=3, rank=4, json=True, model=str(tiny_model_dir), config=config)
    assert train_command(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"persona_id", "adapter_dir", "steps", "train_loss", "eval_loss_before", "eval_loss_after"} <= set(result)
    assert result["steps"] == 3 and result["persona_id"] == "vicuna"
    assert json.loads((Path(result["adapter_dir"]) / "adapter_config.json").read_text())["r"] == 4
    assert result["eval_loss_before"] > 0 and result["eval_loss_after"] > 0
    # two speakers: the voice is not judged, and the JSON says why instead of a number
    assert result["voice_match_base"] is result["voice_match_adapter"] is result["voice_match_real"] is None
    assert "other speaker" in result["voice_match_reason"]
    assert result["kept_step"] <= result["steps"]
