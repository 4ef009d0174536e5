import copy

import pytest

from tests.cards.helpers import V2_CARD


@pytest.fixture
def v2_card():
    return copy.deepcopy(V2_CARD)


@pytest.fixture
def out_dir(tmp_path):
    """An empty folder for exports (tmp_path itself also holds the shared CHORUS_HOME)."""
    d = tmp_path / "out"
    d.mkdir()
    return d
