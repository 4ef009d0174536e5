"""The benchmark's parts (bench/measure.py, bench/models.py): tensors on the model's
device, the same model hooks on every side, a base without LoRA wrappers, and a page
cache that really lets go of a file."""

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.measure import cached_fraction, drop_from_page_cache, step_ms


class _Threads:
    def active(self):
        return contextlib.nullcontext()


class _DeviceModel(torch.nn.Module):
    """A stand-in whose embeddings live on the meta device; it records where its inputs are."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4, device="meta")
        self.seen = []

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, past_key_values=None, use_cache=True, **extra):
        self.seen.append(input_ids.device.type)
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 10, device=input_ids.device), past_key_values=None)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.seen += [input_ids.device.type, attention_mask.device.type]
        return torch.cat([input_ids, input_ids.new_zeros(input_ids.shape[0], max_new_tokens)], 1)


def test_forward_steps_build_their_inputs_on_the_models_device():
    """Item 8: bench/run.py built CPU tensors for a model that may be on cuda:0."""
    model = _DeviceModel()
    step_ms(model, [1, 2, 3], _Threads(), steps=2)
    step_ms(model, [[1, 2], [3, 4]], _Threads(), steps=2)
    assert set(model.seen) == {"meta"}


def test_timed_generation_builds_its_inputs_on_the_models_device():
    from bench.models import Bare

    bare = Bare.__new__(Bare)
    bare.model, bare.threads, bare.tok = _DeviceModel(), _Threads(), SimpleNamespace(pad_token_id=0)
    seconds, new = bare.timed([[1, 2, 3]] * 4, 5)
    assert new.shape == (4, 5) and seconds >= 0
    assert set(bare.model.seen) == {"meta"}


@pytest.fixture(scope="module")
def bare(tiny_model_dir):
    from bench.models import Bare
    from core.model_source import ModelSource

    return Bare(ModelSource("tiny-llama", tiny_model_dir), SimpleNamespace(decode=1, prefill=1))


def _head_input_strides(side, prompt_len=5):
    seen = []
    side.model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append((args[0].stride(0), args[0][0].numel())))
    with torch.inference_mode():
        side.model(input_ids=torch.arange(1, prompt_len + 1)[None], logits_to_keep=1)
    return seen[-1]


def test_the_compared_models_get_the_engines_dense_head_input_and_can_go_without(bare):
    """Item 3a: the dense head-input hook was on Chorus's model only."""
    stride, numel = _head_input_strides(bare)
    assert stride == numel  # a freshly laid out row, as the engine gives its own head
    with bare.hooked(False):
        stride, numel = _head_input_strides(bare)
    assert stride != numel  # transformers' view of the last position, as stock peft ships


def test_the_unwrapped_base_has_no_lora_layers(bare):
    """Item 3d: the base the decode ratio is also stated against has no LoRA wrappers at all."""
    names = [type(m).__name__ for m in bare.model.modules()]
    assert not any("Lora" in n for n in names) and "Linear4bit" in names


def _fs_type(path: Path) -> str:
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def test_a_dropped_file_leaves_the_page_cache(tmp_path):
    """Item 3c: the disk figures are disk reads only if the drop works."""
    f = tmp_path / "adapter_model.safetensors"
    f.write_bytes(os.urandom(1 << 20))
    if cached_fraction(f) is None:
        pytest.skip("mincore is not available here")
    if _fs_type(tmp_path) in ("tmpfs", "ramfs", "overlay"):
        pytest.skip("files in memory cannot leave the page cache")
    assert cached_fraction(f) == 1.0  # just written
    drop_from_page_cache(tmp_path)
    assert cached_fraction(f) < 0.05
    f.read_bytes()
    assert cached_fraction(f) == 1.0
