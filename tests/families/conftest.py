"""Fixtures for the per-family tests: each family's tiny random-weight model
(core/synthetic_families.py, SmolLM2's tokenizer), built once and cached as tests/conftest.py
caches the tiny Llama; a module-scoped engine on it with 3 adapter slots; and four persona
adapters on every linear layer, under the family's own module names.

`family` is parametrized over every family, module-scoped, so each test module runs its
tests family by family and builds each engine once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.synthetic_families import FAMILIES, build_tiny_family, linear_names
from tests.conftest import CACHE, _locked_build


def family_dir_for(family: str, tokenizer_dir: Path) -> Path:
    """The cached model folder of `family`; its name carries a digest of the family's
    recipe, so a changed recipe builds a new model instead of reusing a stale one."""
    digest = hashlib.sha256(repr(FAMILIES[family]).encode()).hexdigest()[:8]
    return _locked_build(CACHE / f"tiny-{family}-{digest}", lambda dest: build_tiny_family(family, tokenizer_dir, dest))


def source_for(folder: Path):
    from core.model_source import ModelSource

    return ModelSource(folder.name, folder)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def family_dir(family, tokenizer_dir) -> Path:
    return family_dir_for(family, tokenizer_dir)


@pytest.fixture(scope="module")
def family_adapters(family, family_dir, tmp_path_factory) -> dict[str, Path]:
    """Personas a, b, c, d: random LoRA (rank 4) on every linear layer of the family."""
    from core.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp(f"adapters-{family}")
    targets = list(linear_names(family))
    return {
        name: make_random_adapter(family_dir, root / name, seed=seed, rank=4, targets=targets)
        for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))
    }


@pytest.fixture(scope="module")
def family_engine(family_dir):
    from core.engine import Engine
    from core.logs import quiet_libraries

    quiet_libraries()
    return Engine.load(source_for(family_dir), max_resident=3)
