"""A training run's life cycle: a run being started is not taken for dead, one run at a
time even when two starts race (threads and processes), cancel at every stage writes
no adapter, a finished run is never registered twice, resume keeps the system prompt of
the first start, and the worker never imports the serving side."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.errors import ChorusError
from core.training.config import TrainConfig, TrainConfigInvalid
from core.training.runner import FAULT_ENV, HOLD_ENV, owner_alive
from core.training.service import TrainingBusy, TrainingService
from tests.training.conftest import SHAREGPT, tiny_config, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _queued(store, **owner) -> str:
    row = store.training.create(speaker="gpt", export_name="x.json", config={"stage": "queued"})
    if owner:
        store.training.update(row["id"], **owner)
    return row["id"]


# (a) the start race -------------------------------------------------------------------


def test_a_queued_run_without_a_worker_lives_while_its_owner_does(service, store):
    alive = _queued(store)
    assert store.training.get(alive)["owner_pid"] == os.getpid()
    assert service.status(alive)["state"] == "queued"  # its owner (this process) is copying the export
    assert [r["state"] for r in service.runs()] == ["queued"]
    service.poll()
    assert store.training.get(alive)["status"] == "queued"

    store.training.update(alive, owner_pid=_dead_pid())  # the starting process died
    st = service.status(alive)
    assert st["state"] == "failed" and st["resumable"]

    stale = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    old = _queued(store, owned_since=stale)  # owner alive, but it never started the worker
    assert service.status(old)["state"] == "failed"


def test_owner_check_refuses_a_reused_pid():
    import socket

    row = {"owner_host": socket.gethostname(), "owner_pid": os.getpid(), "owned_since": datetime.now(timezone.utc).isoformat()}
    assert owner_alive(row)
    # this process started after the run was queued: the pid is another process's now
    row["owned_since"] = datetime.fromtimestamp(0, timezone.utc).isoformat()
    assert not owner_alive(row, grace_s=1e12)
    assert not owner_alive({**row, "owner_pid": None})


def test_the_page_polling_while_the_export_is_copied_does_not_fail_the_run(service, store, monkeypatch):
    seen = {}

    def copy_while_the_page_polls(src, dst, *args, **kwargs):
        page = TrainingService(store, model=service.model)  # another thread's or process's view
        run_id = store.training.active()[0]["id"]
        seen["status"] = page.status(run_id)["state"]
        seen["runs"] = [r["state"] for r in page.runs()]
        page.poll()
        seen["after_poll"] = store.training.get(run_id)["status"]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("core.training.service.shutil.copyfile", copy_while_the_page_polls)
    with pytest.raises(ChorusError, match="disk is full"):
        service.start(SHAREGPT, "gpt", persona_name="Mid", consent=True, config=tiny_config())
    assert seen == {"status": "queued", "runs": ["queued"], "after_poll": "queued"}
    assert service.runs() == []  # a start that failed leaves no run behind


# (b) one run at a time ------------------------------------------------------------------


def test_two_starts_at_once_one_runs_the_other_is_busy(service, store, monkeypatch):
    both_checked = threading.Barrier(2)
    real_check = TrainingService._check_idle

    def check_together(self):
        real_check(self)
        both_checked.wait(10)  # both pass the early check before either inserts

    monkeypatch.setattr(TrainingService, "_check_idle", check_together)
    monkeypatch.setattr(TrainingService, "_spawn", lambda self, run_id: None)  # no worker needed
    results = []

    def start(name):
        svc = TrainingService(store, model=service.model)
        try:
            results.append(("started", svc.start(SHAREGPT, "gpt", persona_name=name, consent=True, config=tiny_config())))
        except TrainingBusy as exc:
            results.append(("busy", exc.run_id))
        except threading.BrokenBarrierError:
            results.append(("busy", None))  # refused at the early check, which the barrier expected twice

    threads = [threading.Thread(target=start, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    kinds = sorted(k for k, _ in results)
    assert kinds == ["busy", "started"], results
    started = next(v for k, v in results if k == "started")
    assert [r["id"] for r in store.training.list()] == [started]


CREATE_SCRIPT = """
import sys, time
from pathlib import Path
from storage.store import Store
from storage.training_runs import RunActive
store = Store()
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
try:
    store.training.create(speaker=sys.argv[2], export_name="x", config={})
    print("created")
except RunActive:
    print("busy")
"""


def test_two_processes_creating_at_once_exactly_one_wins(store, chorus_home, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(4):
        go = tmp_path / f"go-{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", CREATE_SCRIPT, str(go), who], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
        time.sleep(1.5)  # both imported and waiting
        go.touch()
        outs = [p.communicate(60) for p in procs]
        assert sorted(o.strip() for o, _ in outs) == ["busy", "created"], outs
        for row in store.training.active():
            store.training.set_status_if(row["id"], ("queued",), "cancelled")


# (d) keep_checkpoints -----------------------------------------------------------------------


def test_keep_checkpoints_must_keep_the_previous_one():
    with pytest.raises(TrainConfigInvalid, match="between 2 and 20"):
        TrainConfig(keep_checkpoints=1)
    assert TrainConfig(keep_checkpoints=2).keep_checkpoints == 2


# (e) cancel at every stage ------------------------------------------------------------------


@pytest.mark.parametrize("stage", [
    "loading the model",
    "measuring the held-out loss before training",
    "training",  # before the first step (within fit: test_pipeline's cancel test)
    "measuring the held-out loss after training",
    "measuring the voice match",
    "saving the adapter",
    "publishing",  # the adapter is written in the run folder, about to be registered
])
def test_cancel_at_every_stage_writes_no_adapter(service, store, chorus_home, monkeypatch, stage):
    monkeypatch.setenv(HOLD_ENV, stage)
    run_id = service.start(SHAREGPT, "gpt", persona_name="Never", consent=True,
                           config=tiny_config(max_steps=2, save_every=1, samples=0))
    log = chorus_home / "training" / run_id / "worker.log"
    wait_for(lambda: log.is_file() and f"holding at {stage}" in log.read_text(), what=f"the worker at {stage}")
    service.cancel(run_id)
    st = service.wait(run_id, timeout=120)
    assert st["state"] == "cancelled" and st["resumable"] and st["adapter_id"] is None, st
    assert store.personas.list() == [] and store.handle.db["adapters"].count == 0
    root = chorus_home / "adapters"
    assert not root.exists() or list(root.rglob("*")) == []
    assert not (chorus_home / "training" / run_id / "adapter.tmp").exists()
    if stage in ("loading the model", "measuring the held-out loss before training"):
        assert "before" not in st["evaluation"]  # stopped before measuring or training
    assert "status: cancelled" in log.read_text()


# (c) finishing is idempotent ----------------------------------------------------------------


def test_kill_after_finishing_leaves_one_version_and_poll_removes_the_checkpoints(service, store, chorus_home, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "finished")
    run_id = service.start(SHAREGPT, "gpt", persona_name="Tern", consent=True,
                           config=tiny_config(max_steps=4, save_every=2, samples=0))
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "finished" and st["adapter_id"], st
    ckpts = chorus_home / "training" / run_id / "checkpoints"
    assert ckpts.is_dir()  # killed before deleting them: deleted last
    service.poll()
    assert not ckpts.exists()
    assert [v["version"] for v in store.adapters.versions(st["persona_id"])] == [1]


def test_resume_finds_the_adapter_an_earlier_attempt_registered(service, store, chorus_home):
    run_id = service.start(SHAREGPT, "gpt", persona_name="Heron", consent=True,
                           config=tiny_config(max_steps=4, save_every=2, samples=0))
    done = service.wait(run_id, timeout=300)
    assert done["state"] == "finished"
    # What a kill between registering and finishing left with older versions of Chorus:
    # the adapter registered, the run still "running" with a dead worker, checkpoints kept.
    store.training.update(run_id, status="failed", adapter_id=None, evaluation={}, step=2,
                          error="The training process stopped unexpectedly")
    store.handle.db.execute("UPDATE training_runs SET evaluation = '{}' WHERE id = ?", [run_id])
    ckpts = chorus_home / "training" / run_id / "checkpoints"
    ckpts.mkdir()

    service.resume(run_id)
    st = service.wait(run_id, timeout=120)
    assert st["state"] == "finished" and st["adapter_id"] == done["adapter_id"], st
    assert st["step"] == 4 and st["evaluation"]["after"]["loss"] == done["evaluation"]["after"]["loss"]
    assert [v["version"] for v in store.adapters.versions(done["persona_id"])] == [1]  # not registered twice
    log = (chorus_home / "training" / run_id / "worker.log").read_text()
    resumed = log[log.rindex("was already registered") - 200:]
    assert "loading the model" not in resumed and "training" not in resumed.split("registered", 1)[1]
    assert not ckpts.exists()


# (f) resume keeps the system prompt ---------------------------------------------------------


def test_resume_keeps_the_system_prompt_loss_before_was_measured_with(service, store, chorus_home, monkeypatch):
    persona = store.personas.create({"name": "Wren", "description": "A lighthouse keeper on a windy rock."})
    monkeypatch.setenv(FAULT_ENV, "checkpoint@4")
    run_id = service.start(SHAREGPT, "gpt", persona_id=persona["id"], consent=True,
                           config=tiny_config(max_steps=6, save_every=2, samples=1))
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "failed", st
    first = store.training.get(run_id)["config"]["system_prompt"]
    assert "lighthouse" in first
    before = st["evaluation"]["before"]

    store.personas.update(persona["id"], {"description": "A deep-sea diver."})  # edited between kill and resume
    monkeypatch.delenv(FAULT_ENV)
    service.resume(run_id)
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    assert store.training.get(run_id)["config"]["system_prompt"] == first
    adapter = store.adapters.get(st["adapter_id"])
    saved = json.loads((store.adapters.folder(adapter) / "training_config.json").read_text())
    assert saved["system_prompt"] == first and "diver" not in saved["system_prompt"]
    assert st["evaluation"]["before"] == before


# the worker stays away from the serving side ------------------------------------------------


def _worker_imports() -> list[str]:
    """Every chorus module core/training/worker.py imports, at the top and inside functions."""
    tree = ast.parse((ROOT / "core" / "training" / "worker.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return sorted(n for n in names if n.split(".")[0] in ("core", "storage", "ui"))


def test_the_worker_imports_no_runtime_and_no_ui():
    modules = ["core.training.worker", *_worker_imports()]
    assert "core.training.trainer" in modules and "core.training.qlora" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('\\n'.join(m for m in sys.modules if m == 'core.runtime' or m == 'ui' or m.startswith('ui.') "
            "or m == 'gradio' or m == 'core.engine'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
