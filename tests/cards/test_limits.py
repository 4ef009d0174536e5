"""Size and shape limits: huge fields, deep nesting, oversized files are refused cleanly."""

import json

import pytest

from core.cards import Card, card_to_png, card_to_v2_json, read_card, write_bundle
from core.errors import CardInvalid
from tests.cards.helpers import b64json, png_with_text


def test_huge_field_refused_naming_it():
    obj = {"spec": "chara_card_v2", "data": {"name": "Big", "description": "x" * (300 * 1024)}}
    with pytest.raises(CardInvalid, match=r"data\.description .*256 KB"):
        read_card(json.dumps(obj).encode())


def test_huge_field_in_png_refused():
    obj = {"name": "Big", "mes_example": "y" * (300 * 1024)}
    with pytest.raises(CardInvalid, match="mes_example"):
        read_card(png_with_text((b"chara", b64json(obj))))


def test_field_at_limit_is_fine():
    obj = {"name": "Edge", "description": "x" * (256 * 1024)}
    assert len(read_card(json.dumps(obj).encode()).card.description) == 256 * 1024


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_refused_without_recursion_error(depth):
    raw = '{"name": "Deep", "data": {"name": "Deep", "extensions": {"x": ' + "[" * depth + "]" * depth + "}}}"
    with pytest.raises(CardInvalid, match="levels deep"):
        read_card(raw.encode())


def test_brackets_inside_strings_do_not_count():
    obj = {"name": "Brackets", "description": "[" * 5000 + '\\"{' * 100}
    assert read_card(json.dumps(obj).encode()).card.description == obj["description"]


def test_whole_json_over_2mb_refused():
    obj = {"name": "Fat", "pad": ["x" * 100_000] * 25}
    with pytest.raises(CardInvalid, match="MB"):
        read_card(json.dumps(obj).encode())


def test_many_small_fields_over_2mb_refused_on_file(out_dir):
    p = out_dir / "fat.json"
    p.write_text(json.dumps({"name": "Fat", "pad": ["x" * 1000] * 3000}))
    with pytest.raises(CardInvalid, match="limit"):
        read_card(p)


def test_writers_refuse_what_readers_would(out_dir):
    card = Card(name="Long", description="z" * (300 * 1024))
    for write in (card_to_v2_json, card_to_png):
        with pytest.raises(CardInvalid, match="256 KB"):
            write(card)
    with pytest.raises(CardInvalid):
        write_bundle(card, None, out_dir / "x.charx")
    assert list(out_dir.iterdir()) == []
