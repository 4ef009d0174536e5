"""Slots under groups, failures and edits: a group pins every row's slot (one persona twice,
in two versions, each row decodes with its own); distinct versions count against
--max-resident-adapters; a full pool of pinned slots says so; a failure after placement
leaks no slot; the caches read outside the generation lock are guarded; a file edited
in place is checked again; and the status snapshot never waits for a reply."""

import os
import shutil
import threading
import time

import pytest
from safetensors import safe_open

from core.engine import AdapterRef, GenerationSettings
from core.errors import AdapterCorrupt, ChorusError
from storage.adapter_files import sha256_file

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


def greedy(n=10):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=3)


def pinned_ref(persona, folder):
    return AdapterRef(persona, folder, sha256_file(folder / "adapter_model.safetensors"))


def test_a_group_with_one_persona_in_two_versions_decodes_each_row_with_its_own(tiny_engine_factory, tiny_adapters):
    v1, v2, other = pinned_ref("p", tiny_adapters["a"]), pinned_ref("p", tiny_adapters["b"]), pinned_ref("q", tiny_adapters["c"])
    requests = [(PROMPT, v1), (PROMPT, v2), (PROMPT[2:], other)]
    alone = [tiny_engine_factory(max_resident=1).generate(p, r, greedy()) for p, r in requests]
    assert len(set(alone)) == 3
    engine = tiny_engine_factory(max_resident=3)
    # Before pinning, loading v2 freed v1's slot and the third row's load refilled it.
    assert engine.generate_group(requests, greedy()) == alone
    assert sorted(engine.resident()) == ["p", "q"]  # v1 goes once the group is done
    assert all(res.pins == 0 for res in engine._resident.values())


def test_loading_a_new_version_keeps_a_pinned_old_one_out_of_reach_of_refills(tiny_engine_factory, tiny_adapters):
    """The mechanism behind a mixed row: v2's load released v1's slot while a row pointed
    at it, and the next load refilled that slot with another adapter."""
    engine = tiny_engine_factory(max_resident=3)
    slot_v1 = engine.ensure_adapter(pinned_ref("p", tiny_adapters["a"]), pin=True)
    slot_v2 = engine.ensure_adapter(pinned_ref("p", tiny_adapters["b"]), pin=True)
    slot_q = engine.ensure_adapter(pinned_ref("q", tiny_adapters["c"]), pin=True)
    assert len({slot_v1, slot_v2, slot_q}) == 3
    assert engine.pool._slots[slot_v1].busy and engine.resident().count("p") == 2
    engine.unpin([slot_v1, slot_v2, slot_q])
    assert sorted(engine.resident()) == ["p", "q"] and not engine.pool._slots[slot_v1].busy


def test_a_group_counts_distinct_versions_against_max_resident(tiny_engine_factory, tiny_adapters):
    engine = tiny_engine_factory(max_resident=2)
    requests = [(PROMPT, pinned_ref("p", tiny_adapters["a"])), (PROMPT, pinned_ref("p", tiny_adapters["b"])),
                (PROMPT, pinned_ref("q", tiny_adapters["c"]))]
    with pytest.raises(ChorusError, match="at most 2 distinct adapters"):
        engine.generate_group(requests, greedy())
    assert engine.resident() == []  # refused before anything loaded


def test_pinned_slots_are_never_evicted_and_a_full_pool_says_so(tiny_engine_factory, tiny_adapters):
    engine = tiny_engine_factory(max_resident=1)
    a = engine.ensure_adapter(AdapterRef("a", tiny_adapters["a"]), pin=True)
    with pytest.raises(ChorusError, match="in use by the group"):
        engine.ensure_adapter(AdapterRef("b", tiny_adapters["b"]))
    assert engine.resident() == ["a"]
    engine.unpin([a])
    engine.ensure_adapter(AdapterRef("b", tiny_adapters["b"]))
    assert engine.resident() == ["b"]


def test_a_failure_after_placement_leaves_no_busy_slot_behind(tiny_engine_factory, tiny_adapters, monkeypatch):
    import core.engine.local as engine_module

    expected = tiny_engine_factory(max_resident=1).generate(PROMPT, AdapterRef("b", tiny_adapters["b"]), greedy())
    engine = tiny_engine_factory(max_resident=1)
    real = engine_module._Resident

    def failing(*args, **kwargs):
        monkeypatch.setattr(engine_module, "_Resident", real)  # once
        raise OSError("stat failed")

    monkeypatch.setattr(engine_module, "_Resident", failing)
    with pytest.raises(OSError):
        engine.ensure_adapter(AdapterRef("a", tiny_adapters["a"]))
    assert engine.resident() == [] and not any(slot.busy for slot in engine.pool._slots.values())
    # The next load finds the slot free (before: a busy slot nobody owned, and StopIteration).
    assert engine.generate(PROMPT, AdapterRef("b", tiny_adapters["b"]), greedy()) == expected


def _guarded(base, lock):
    """An instance of `base` (dict or OrderedDict) whose reads and writes fail unless
    `lock` is held."""

    class Guarded(base):
        def _check(self):
            assert lock.locked(), "a cache touched outside its lock"

        def __setitem__(self, key, value):
            self._check()
            super().__setitem__(key, value)

        def get(self, key, default=None):
            self._check()
            return super().get(key, default)

        def clear(self):
            self._check()
            super().clear()

        if hasattr(base, "move_to_end"):
            def move_to_end(self, key, last=True):
                self._check()
                super().move_to_end(key, last)

    return Guarded()


def test_the_caches_read_outside_the_generation_lock_are_used_under_their_own_locks(tiny_engine_factory, tiny_adapters):
    from collections import OrderedDict

    engine = tiny_engine_factory(max_resident=1)
    engine._checked = checked = _guarded(OrderedDict, engine._checked_lock)
    digests = engine._digests
    digests._digests = _guarded(dict, digests._lock)
    for name in ("a", "b", "a", "b"):  # full checks, then direct reloads
        engine.ensure_adapter(AdapterRef(name, tiny_adapters[name]))
    assert len(checked) == 2 and len(digests._digests) == 2


def _edit_in_place(weights, value=b"\x00\x00\x80\x3f"):
    """Change one value of a lora_B matrix, keeping the file's size, inode and mtime."""
    st = os.stat(weights)
    with safe_open(str(weights), "pt") as f:
        key = next(k for k in sorted(f.keys()) if "lora_B" in k)
    with open(weights, "rb") as fh:
        (n,) = __import__("struct").unpack("<Q", fh.read(8))
        import json

        begin = json.loads(fh.read(n))[key]["data_offsets"][0] + 8 + n
    with open(weights, "r+b") as fh:
        fh.seek(begin)
        fh.write(value)  # 1.0 in fp32 by default
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(weights)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    return key


def test_an_edit_in_place_that_keeps_size_and_mtime_is_checked_again(tiny_engine_factory, tiny_adapters, tmp_path):
    folder = tmp_path / "p"
    shutil.copytree(tiny_adapters["a"], folder)
    weights = folder / "adapter_model.safetensors"
    recorded = pinned_ref("p", folder)
    engine = tiny_engine_factory(max_resident=1)
    engine.generate(PROMPT, recorded, greedy())  # the full check
    engine.generate(PROMPT, AdapterRef("b", tiny_adapters["b"]), greedy())  # evicts p
    _edit_in_place(weights)
    # Same size, mtime and inode (before: the remembered digest, then a direct read of the
    # edited bytes); the ctime moved, so the file is hashed again and refused.
    with pytest.raises(AdapterCorrupt, match="checksum"):
        engine.ensure_adapter(recorded)
    assert engine.resident() == ["b"]  # refused before anything was evicted
    fresh = tiny_engine_factory(max_resident=1)
    edited = fresh.generate(PROMPT, AdapterRef("p", folder), greedy())
    assert engine.generate(PROMPT, AdapterRef("p", folder), greedy()) == edited  # no checksum: the new bytes
    # Resident and edited again: a request without a checksum does not trust the old slot.
    before = engine.generate(PROMPT, AdapterRef("p", folder), greedy())
    _edit_in_place(weights, value=b"\x00\x00\x00\x41")
    again = tiny_engine_factory(max_resident=1).generate(PROMPT, AdapterRef("p", folder), greedy())
    assert before != again
    assert engine.generate(PROMPT, AdapterRef("p", folder), greedy()) == again


def test_status_and_resident_never_wait_for_a_reply(tiny_engine, tiny_adapters):
    settings = GenerationSettings(temperature=1.0, max_new_tokens=400, min_new_tokens=400, seed=1)
    waited = []
    for piece in tiny_engine.stream(PROMPT, AdapterRef("a", tiny_adapters["a"]), settings):
        if not waited:
            assert tiny_engine._lock._is_owned() is False  # held by the generating thread, not us
            t0 = time.perf_counter()
            status = tiny_engine.status()
            resident = tiny_engine.resident()
            waited.append(time.perf_counter() - t0)
            assert status["resident_adapters"] == resident == ["a"]
    assert waited[0] < 0.5  # the reply itself takes seconds

    held = threading.Event()
    release = threading.Event()

    def hold():
        with tiny_engine._lock:  # as a generation does
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    got = {}
    reader = threading.Thread(target=lambda: got.update(status=tiny_engine.status(), resident=tiny_engine.resident()))
    reader.start()
    reader.join(2)
    finished = not reader.is_alive()
    release.set()
    t.join()
    reader.join()
    assert finished and got["resident"] == ["a"]
