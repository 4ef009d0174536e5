"""The remote engine's pieces that need no server: publishing into the shared folder
(atomic, named by persona and checksum, nothing outside it), the URL rule, and telling
the base model from adapters in vLLM's and Chorus's model lists."""

from __future__ import annotations

import json
import os

import pytest

from core.adapters import inspect_adapter
from core.engine.publish import AdapterShelf, published_name
from core.engine.remote import _base_entries
from core.engine.remote_http import normalize_url
from core.errors import AdapterIncompatible, ChorusError
from storage.adapter_files import CONFIG, META, WEIGHTS


def test_publish_names_the_folder_by_persona_and_checksum(tmp_path, tiny_adapters):
    tmp_path = tmp_path / "shared"  # beside the test's CHORUS_HOME, which lives in tmp_path
    tmp_path.mkdir()
    shelf = AdapterShelf(tmp_path, "org/served-name")
    spec = inspect_adapter(tiny_adapters["a"])
    name = shelf.publish("juniper", spec)
    assert name == f"juniper-{spec.sha256[:12]}" and os.listdir(tmp_path) == [name]
    folder = tmp_path / name
    assert sorted(os.listdir(folder)) == sorted([CONFIG, WEIGHTS, META])
    config = json.loads((folder / CONFIG).read_text())
    assert config["base_model_name_or_path"] == "org/served-name" and config["r"] == spec.rank
    assert inspect_adapter(folder).sha256 == spec.sha256
    stat = (folder / WEIGHTS).stat()
    assert shelf.publish("juniper", spec) == name and (folder / WEIGHTS).stat().st_ino == stat.st_ino  # kept as is
    other = shelf.publish("juniper", inspect_adapter(tiny_adapters["b"]))
    assert shelf.versions("juniper") == sorted([name, other]) and shelf.versions("junip") == []
    shelf.unpublish(name)
    assert os.listdir(tmp_path) == [other]  # no temp folder left behind


def test_a_damaged_copy_is_replaced(tmp_path, tiny_adapters):
    tmp_path = tmp_path / "shared"  # beside the test's CHORUS_HOME, which lives in tmp_path
    tmp_path.mkdir()
    shelf = AdapterShelf(tmp_path, "tiny-llama")
    spec = inspect_adapter(tiny_adapters["a"])
    name = shelf.publish("byte", spec)
    (tmp_path / name / WEIGHTS).write_bytes(b"truncated")
    assert shelf.publish("byte", spec) == name
    assert inspect_adapter(tmp_path / name).sha256 == spec.sha256 and os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_odd_persona_ids_cannot_name_a_folder(bad):
    with pytest.raises(AdapterIncompatible):
        published_name(bad, "0" * 64)


def test_the_folder_must_exist(tmp_path):
    with pytest.raises(ChorusError, match="does not exist"):
        AdapterShelf(tmp_path / "missing", "tiny-llama")


def test_engine_urls():
    assert normalize_url("http://gpu-box:8000") == "http://gpu-box:8000/v1"
    assert normalize_url("http://gpu-box:8000/v1/") == "http://gpu-box:8000/v1"
    with pytest.raises(ChorusError, match="--engine"):
        normalize_url("gpu-box:8000")


def test_base_models_are_told_from_adapters():
    vllm = [{"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "owned_by": "vllm", "parent": None},
            {"id": "juniper-0123456789ab", "owned_by": "vllm", "parent": "HuggingFaceTB/SmolLM2-135M-Instruct"}]
    chorus = [{"id": "juniper", "owned_by": "chorus"}, {"id": "byte-0123456789ab", "owned_by": "chorus", "parent": "tiny"},
              {"id": "tiny", "owned_by": "base"}]
    assert [m["id"] for m in _base_entries(vllm)] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert [m["id"] for m in _base_entries(chorus)] == ["tiny"]
