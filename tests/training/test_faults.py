"""kill -9 of the training worker at the exact moments that matter: while a checkpoint is
being written (before it is marked complete), with the final adapter written but not
registered, between creating the persona and registering its adapter, between
registering it and marking the run finished, and between finishing and deleting the
checkpoints. After each kill: the database is intact, nothing half-written is in the
adapter store, no persona points at a missing folder; the run resumes from its last
complete checkpoint, and a run is never registered twice."""

import sqlite3
from pathlib import Path

import pytest

from core.training.runner import FAULT_ENV
from tests.training.conftest import SHAREGPT, tiny_config


def _check_store(store, home):
    db = sqlite3.connect(home / "chorus.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
    root = home / "adapters"
    assert list(root.rglob(".tmp-*")) == [] if root.exists() else True
    # every version folder on disk is a registered adapter, and every registered one is whole
    rows = store.handle.db["adapters"].rows
    registered = {store.adapters.folder(r) for r in rows}
    on_disk = set(root.glob("*/v*")) if root.exists() else set()
    assert on_disk == registered
    for folder in registered:
        assert (Path(folder) / "adapter_model.safetensors").is_file()
    for p in store.personas.list():
        if p.get("adapter_id"):
            assert store.adapters.folder(store.adapters.get(p["adapter_id"])) in registered


@pytest.mark.parametrize(
    "fault, resumed_from",
    [
        ("checkpoint@4", 2),  # checkpoint-4 written but never marked complete
        ("adapter", 6),       # final adapter complete in the run folder, not registered
        ("register", 6),      # inside the publishing transaction: the persona created, no adapter yet
        ("registered", 6),    # inside it: the version renamed into place, the run not yet finished
    ],
)
def test_kill_at_a_save_point_then_resume(service, store, chorus_home, monkeypatch, fault, resumed_from):
    monkeypatch.setenv(FAULT_ENV, fault)
    run_id = service.start(SHAREGPT, "gpt", persona_name="Kestrel", consent=True,
                           config=tiny_config(max_steps=6, save_every=2, samples=0))
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "failed" and "unexpectedly" in st["error"] and st["resumable"], st

    if fault == "registered":  # the folder was renamed in a transaction that never committed
        assert [p.name for p in (chorus_home / "adapters").glob("*/v*")] == ["v1"]
        store.adapters.sweep()  # what the next start of the app does
    _check_store(store, chorus_home)
    assert store.handle.db["adapters"].count == 0
    assert store.personas.list() == []  # the persona and its adapter are one transaction with the finish
    if fault.startswith("checkpoint"):
        ckpt = chorus_home / "training" / run_id / "checkpoints"
        assert (ckpt / "checkpoint-4").is_dir() and not (ckpt / "checkpoint-4" / "chorus_complete").exists()

    monkeypatch.delenv(FAULT_ENV)
    service.resume(run_id)
    st = service.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    assert st["result"]["resumed_from"] == resumed_from and st["step"] == 6
    ev = st["evaluation"]
    assert ev["after"]["loss"] < ev["before"]["loss"]  # the trained weights, not a fresh LoRA (which equals the base)
    personas = store.personas.list()
    assert [p["name"] for p in personas] == ["Kestrel"]  # resumed into the same persona, no duplicate
    adapter = store.adapters.get(personas[0]["adapter_id"])
    assert adapter["version"] == 1 and (store.adapters.folder(adapter) / "adapter_model.safetensors").is_file()
    _check_store(store, chorus_home)
