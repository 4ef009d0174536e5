"""Tokenizers with each kind of chat template (tests/prompting/templates.py)."""

import pytest

from .templates import TEMPLATES, tokenizer_with


@pytest.fixture(scope="module")
def toks(tokenizer_dir):
    return {name: tokenizer_with(tokenizer_dir, t) for name, t in TEMPLATES.items()}
