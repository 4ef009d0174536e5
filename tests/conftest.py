"""Shared fixtures: an isolated CHORUS_HOME per test, and models the tests build themselves.

Built models are cached across runs under $CHORUS_TEST_CACHE (default ~/.cache/chorus-tests)
so that only the first run pays for the GGUF conversion.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("CHORUS_TEST_CACHE", Path.home() / ".cache" / "chorus-tests"))

# Engines in the tests (in this process and in the servers it starts) run bitsandbytes' own
# 4-bit kernels, not bf16 copies chosen by timing: on the tiny random models the timing is a
# coin toss, and two engines that chose differently would give near-tie tokens differently
# (random weights make near-ties common). tests/test_cpu_4bit.py turns the copies on.
os.environ["CHORUS_DENSE_WEIGHTS"] = "off"
# Likewise the compute dtype (core/engine/compute_dtype.py): bf16, the dtype the tests'
# reference models load in, unless a test asks for fp32 (tests/test_compute_dtype.py).
os.environ["CHORUS_SERVE_DTYPE"] = "bf16"
# And the decode attention against sdpa (core/engine/attention.py): Chorus's, untimed.
os.environ["CHORUS_DECODE_ATTENTION"] = "on"


@pytest.fixture(autouse=True)
def chorus_home(tmp_path, monkeypatch):
    home = tmp_path / "chorus-home"
    home.mkdir()
    monkeypatch.setenv("CHORUS_HOME", str(home))
    return home


def _locked_build(dest: Path, build):
    """Build `dest` once even when several test processes start at the same time."""
    import fcntl

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "config.json").is_file() and not (dest / "tokenizer.json").is_file():
            build(dest)
    return dest


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer and chat template, read from the embedded GGUF."""

    def build(dest):
        from transformers import AutoTokenizer

        from core.model_source import find_embedded_gguf

        gguf = find_embedded_gguf()
        tmp = dest.parent / f".{dest.name}.tmp"
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        tmp.rename(dest)

    return _locked_build(CACHE / "smollm2-tokenizer", build)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir) -> Path:
    """A random-weight 2-layer Llama with SmolLM2's tokenizer (about 7 MB in NF4)."""
    from core.synthetic import build_tiny_llama

    return _locked_build(CACHE / "tiny-llama", lambda dest: build_tiny_llama(tokenizer_dir, dest))


@pytest.fixture(scope="session")
def other_tiny_model_dir(tokenizer_dir) -> Path:
    """A second random-weight Llama of another shape (3 layers instead of 2): another
    fingerprint, for switching models (its folder name, tiny-llama-b, is its model name)."""
    from core.synthetic import build_tiny_llama

    return _locked_build(CACHE / "tiny-llama-b", lambda dest: build_tiny_llama(tokenizer_dir, dest, layers=3, seed=1))


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct converted to safetensors (once per cache)."""
    from core.model_source import EMBEDDED_NAME, convert_gguf, find_embedded_gguf

    return _locked_build(CACHE / EMBEDDED_NAME, lambda dest: convert_gguf(find_embedded_gguf(), dest, lambda m: None))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Three random LoRA adapters for the tiny model, each changing its voice."""
    from core.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("tiny-adapters")
    return {
        name: make_random_adapter(tiny_model_dir, root / name, seed=seed, rank=4)
        for name, seed in (("a", 1), ("b", 2), ("c", 3))
    }


@pytest.fixture(scope="session")
def tiny_engine_factory(tiny_model_dir):
    from core.engine import Engine
    from core.model_source import ModelSource
    from core.logs import quiet_libraries

    quiet_libraries()

    def make(max_resident: int = 8, **options):
        return Engine.load(ModelSource("tiny-llama", tiny_model_dir), max_resident=max_resident, **options)

    return make


@pytest.fixture
def tiny_engine(tiny_engine_factory):
    return tiny_engine_factory()


@pytest.fixture
def stock_kernels_engine(tiny_engine_factory):
    """The engine on bitsandbytes' own 4-bit kernels only (no bf16 copies of the weights,
    core/engine/cpu_4bit.py): for comparisons with stock peft on its own NF4 copy."""
    return tiny_engine_factory(dense_budget=0)


# CI runs property tests derandomized so that a run is repeatable; locally they explore.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    _hyp_settings.register_profile("dev", deadline=None)
    _hyp_settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:
    pass
