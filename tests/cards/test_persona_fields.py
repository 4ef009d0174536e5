"""Card <-> persona store row, and the derived tagline."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cards import Card, card_to_persona_fields, card_to_v2_json, card_to_v3_json, persona_fields_to_card, read_card
from core.cards.persona import derive_tagline
from core.errors import CardInvalid

KEYS = {"name", "description", "personality", "scenario", "greeting", "alternate_greetings",
        "example_dialogue", "system_prompt", "tagline", "extras"}


def test_fields_have_exactly_the_store_keys(v2_card):
    card = read_card(json.dumps(v2_card).encode()).card
    fields = card_to_persona_fields(card)
    assert set(fields) == KEYS
    assert fields["greeting"] == "*wipes a glass* What'll it be?"
    ex = fields["extras"]
    assert ex["post_history_instructions"] == "Stay in character." and ex["tags"] == ["pirate"]
    assert ex["creator_notes"] == "Made for testing." and ex["creator"] == "tester" and ex["character_version"] == "1.2"
    assert "character_book" in ex["data"] and "create_date" in ex["root"]
    json.dumps(fields)  # a store can keep it as JSON


def test_card_fields_card_is_lossless(v2_card):
    card = read_card(json.dumps(v2_card).encode()).card
    back = persona_fields_to_card(json.loads(json.dumps(card_to_persona_fields(card))), avatar=b"png")
    assert back == Card(**{**card.__dict__, "avatar": b"png"})


def test_edited_fields_export(v2_card):
    card = read_card(json.dumps(v2_card).encode()).card
    fields = card_to_persona_fields(card)
    fields["greeting"] = "Welcome back."
    fields["extras"]["tags"].append("tavern")
    out = json.loads(card_to_v2_json(persona_fields_to_card(fields)))
    assert out["first_mes"] == out["data"]["first_mes"] == "Welcome back."
    assert out["data"]["tags"] == ["pirate", "tavern"]
    assert out["data"]["character_book"] == v2_card["data"]["character_book"]


def test_persona_without_name_refused():
    with pytest.raises(CardInvalid, match="name"):
        persona_fields_to_card({"name": "  "})


@pytest.mark.parametrize(
    "notes, description, expected",
    [
        ("A gruff pirate who runs a tavern. Find more cards on my page!", "", "A gruff pirate who runs a tavern."),
        ("", "{{char}} is a baker. She loves bread.", "Mira is a baker."),
        ("<p><b>Cozy</b> slice-of-life bot!</p><img src=x>", "ignored", "Cozy slice-of-life bot!"),
        ("![banner](https://x/y.png)\n\n[Link](https://z) to my Patreon", "", "Link to my Patreon"),
        ("", '[character("Mira") {Species("human")}]\nMira likes rum.', "Mira likes rum."),
        ("", "", ""),
    ],
)
def test_tagline(notes, description, expected):
    assert derive_tagline(Card(name="Mira", creator_notes=notes, description=description)) == expected


def test_tagline_is_clipped_on_a_word():
    line = derive_tagline(Card(name="M", description="word " * 60))
    assert len(line) <= 100 and line.endswith("…") and "wor…" not in line


# Hypothesis: any card survives card -> fields -> card and card -> V2/V3 JSON -> card.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40)
json_leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | text
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=8)
extras = st.fixed_dictionaries(
    {},
    optional={
        "data": st.dictionaries(text.filter(lambda k: k not in {
            "name", "description", "personality", "scenario", "first_mes", "mes_example", "system_prompt",
            "post_history_instructions", "creator_notes", "creator", "character_version", "alternate_greetings",
            "tags", "extensions", "assets", "group_only_greetings"}), json_value, min_size=1, max_size=3),
        "root": st.dictionaries(text.filter(lambda k: k not in {
            "name", "description", "personality", "scenario", "first_mes", "mes_example", "tags",
            "creatorcomment", "spec", "spec_version", "data"}), json_value, min_size=1, max_size=3),
    },
)
cards = st.builds(
    Card,
    name=text.map(str.strip).filter(bool),
    description=text, personality=text, scenario=text, greeting=text,
    alternate_greetings=st.lists(text, max_size=3), example_dialogue=text, system_prompt=text,
    post_history_instructions=text, creator_notes=text,
    tags=st.lists(text.map(str.strip).filter(lambda t: t and "," not in t), max_size=3),
    creator=text, character_version=text, extras=extras,
)


@settings(max_examples=60, deadline=None)
@given(cards)
def test_round_trips_property(card):
    assert persona_fields_to_card(card_to_persona_fields(card)) == card
    assert read_card(card_to_v2_json(card)).card == card
    assert read_card(card_to_v3_json(card)).card == card


def test_names_with_regex_escapes_stay_literal():
    from core.cards import Card

    for name in ("\\1", "\\", "a\\gb"):
        card = Card(name=name, description="{{char}} is here.")
        assert card_to_persona_fields(card)["tagline"].startswith(name)
        assert persona_fields_to_card(card_to_persona_fields(card)) == card
