"""A full disk (a 3 MB tmpfs as CHORUS_HOME) while saving adapters, imports and
conversations: each is refused with a message about disk space, and nothing saved before
is damaged; once space is freed, saving works again."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from core.errors import ChorusError, StorageError
from core.persona_cards import import_card
from storage.store import Store
from tests.cards.helpers import b64json, png_with_text


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); run as root to test a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> list[Path]:
    """Fill the disk with 16 KB files, then bytes, until nothing more fits."""
    files, chunk = [], os.urandom(16 * 1024)
    for size in (len(chunk), 1):
        while True:
            path = folder / f"filler-{uuid.uuid4().hex[:8]}"
            try:
                with open(path, "wb") as fh:
                    fh.write(chunk[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                path.unlink(missing_ok=True)
                break
            files.append(path)
    return files


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def noisy_card_png(name: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3)).save(buf, "PNG")  # ~120 KB, does not compress
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, "description": "From a full disk."}}
    return png_with_text((b"chara", b64json(card)), image=buf.getvalue())


def assert_intact(store: Store, conv_id: str, saved: list[dict], adapter_dir: Path, adapter_hashes: dict) -> None:
    assert store.handle.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for msg in saved:
        assert store.conversations.message(msg["id"])["content"] == msg["content"]
    assert tree_hashes(adapter_dir) == adapter_hashes
    assert [v["version"] for v in store.adapters.versions("keeper")] == [1]


def test_full_disk_refuses_clearly_and_damages_nothing(small_disk, tiny_adapters, tmp_path):
    home = small_disk / "home"
    store = Store(home)
    store.personas.create({"name": "Keeper"}, persona_id="keeper")
    row = store.adapters.add_version("keeper", tiny_adapters["a"], {"rank": 4, "alpha": 8, "base_model": "tiny-llama"})
    adapter_dir = store.adapters.folder(row)
    adapter_hashes = tree_hashes(adapter_dir)
    conv = store.conversations.create("Before the disk filled")
    saved = []
    for i in range(5):
        saved.append(store.conversations.add_message(conv["id"], "user", f"message {i}", parent_id=saved[-1]["id"] if saved else None))
    card = tmp_path / "card.png"  # the upload lives elsewhere, as Gradio's temp file does
    card.write_bytes(noisy_card_png("Full Disk Fiona"))

    fillers = fill(small_disk)
    answers = {}

    # an adapter version: refused, no half folder left
    with pytest.raises(StorageError) as info:
        store.adapters.add_version("keeper", tiny_adapters["b"], {"rank": 4, "alpha": 8})
    answers["adapter version"] = str(info.value)
    assert not [p for p in (home / "adapters" / "keeper").iterdir() if p.name != "v1"]

    # a card import (its avatar needs room): refused, no half persona left
    with pytest.raises(ChorusError) as info:
        import_card(store, card)
    answers["card import"] = str(info.value)
    assert [p["id"] for p in store.personas.list()] == ["keeper"]

    # an avatar picture (written beside the database)
    with pytest.raises(StorageError) as info:
        store.personas.set_avatar("keeper", noisy_card_png("x"))
    answers["avatar"] = str(info.value)
    assert store.personas.get("keeper")["avatar"] is None and not list((home / "avatars").glob("*"))

    # conversation messages: the WAL may still have room for a few, then they are refused
    with pytest.raises(StorageError) as info:
        for i in range(2000):
            saved.append(store.conversations.add_message(conv["id"], "user", f"more {i} " + "x" * 4000, parent_id=saved[-1]["id"]))
    answers["message"] = str(info.value)

    for where, text in answers.items():
        assert "disk is full" in text and "Free some disk space" in text, f"{where}: {text}"
        assert "Traceback" not in text and "Errno" not in text, f"{where}: {text}"
    assert_intact(store, conv["id"], saved, adapter_dir, adapter_hashes)

    # reopened (as after a restart on the still-full disk): everything is there
    reopened = Store(home)
    assert_intact(reopened, conv["id"], saved, adapter_dir, adapter_hashes)

    # space freed: saving works again
    for f in fillers:
        f.unlink()
    store.conversations.add_message(conv["id"], "assistant", "back again", parent_id=saved[-1]["id"])
    assert store.adapters.add_version("keeper", tiny_adapters["b"], {"rank": 4, "alpha": 8})["version"] == 2
    assert import_card(store, card).name == "Full Disk Fiona"
    print("\nfull disk answers:", answers)
