"""Card JSON in real-world shapes: V1, V2 (with V1 repeats), V3, sloppy fields."""

import json

import pytest

from core.cards import Card, card_to_v2_json, card_to_v3_json, read_card
from core.errors import CardInvalid


def read_json(obj, **kw):
    return read_card(json.dumps(obj).encode(), **kw)


def test_v1_only_card():
    obj = {
        "name": "Bob",
        "description": "A baker.",
        "personality": "cheerful",
        "scenario": "A bakery at dawn.",
        "first_mes": "Fresh bread!",
        "mes_example": "<START>\n{{user}}: Hello\n{{char}}: Want a croissant?",
        "avatar": "none",
        "chat": "Bob - 2023-5-1",
    }
    imp = read_json(obj)
    card = imp.card
    assert imp.source_format == "json-v1"
    assert (card.name, card.description, card.personality, card.scenario) == ("Bob", "A baker.", "cheerful", "A bakery at dawn.")
    assert card.greeting == "Fresh bread!"
    assert card.example_dialogue == "<START>\n{{user}}: Hello\n{{char}}: Want a croissant?"
    assert card.extras == {"root": {"avatar": "none", "chat": "Bob - 2023-5-1"}}
    # Exporting gives the unknown keys back, and SillyTavern's V2 shape.
    out = json.loads(card_to_v2_json(card))
    assert out["chat"] == "Bob - 2023-5-1" and out["spec"] == "chara_card_v2"
    assert out["data"]["first_mes"] == "Fresh bread!" and out["first_mes"] == "Fresh bread!"


def test_pygmalion_style_v1_names():
    imp = read_json({"char_name": "Old", "char_persona": "persona", "char_greeting": "hi", "world_scenario": "w", "example_dialogue": "<START>"})
    c = imp.card
    assert (c.name, c.description, c.greeting, c.scenario, c.example_dialogue) == ("Old", "persona", "hi", "w", "<START>")
    assert c.extras == {}


def test_v2_with_v1_repeated_at_top(v2_card):
    imp = read_json(v2_card)
    c = imp.card
    assert imp.source_format == "json-v2" and imp.warnings == []
    assert c.name == "Captain Mira"
    assert c.system_prompt == "You are {{char}}."
    assert c.post_history_instructions == "Stay in character."
    assert c.alternate_greetings == ["Ahoy.", "Back again?"]
    assert c.creator_notes == "Made for testing." and c.creator == "tester" and c.character_version == "1.2"
    assert c.tags == ["pirate"]
    assert c.example_dialogue == "<START>\n{{user}}: Hi\n{{char}}: Arr."
    # Unknown parts kept: extensions, lorebook, SillyTavern's top-level keys; stale mirrors dropped.
    assert c.extras["data"]["character_book"]["entries"][0]["content"] == "The rum is watered."
    assert c.extras["data"]["extensions"]["depth_prompt"] == {"prompt": "", "depth": 4}
    assert set(c.extras["root"]) == {"avatar", "talkativeness", "fav", "create_date"}


def test_data_wins_over_stale_top_level_copy(v2_card):
    v2_card["description"] = "OLD description"
    assert read_json(v2_card).card.description == "A retired pirate captain who runs a tavern."


def test_top_level_field_used_when_data_lacks_it(v2_card):
    del v2_card["data"]["scenario"]
    assert read_json(v2_card).card.scenario == "{{user}} walks into the tavern."


def test_v2_export_reimport_is_identical(v2_card):
    card = read_json(v2_card).card
    again = read_card(card_to_v2_json(card)).card
    assert again == card
    out = json.loads(card_to_v2_json(card))
    for key in ("name", "description", "personality", "scenario", "first_mes", "mes_example"):
        assert out[key] == out["data"][key]
    assert out["data"]["character_book"] == v2_card["data"]["character_book"]
    assert out["data"]["extensions"] == v2_card["data"]["extensions"]


def test_v3_card_and_round_trip(v2_card):
    data = dict(v2_card["data"])
    data.update(nickname="Mira", group_only_greetings=["Crew!"], creation_date=1700000000, source=["https://example.org/mira"])
    obj = {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}
    imp = read_json(obj)
    assert imp.source_format == "json-v3"
    assert imp.card.extras["data"]["nickname"] == "Mira"
    assert imp.card.extras["data"]["group_only_greetings"] == ["Crew!"]
    out = json.loads(card_to_v3_json(imp.card))
    assert out["spec"] == "chara_card_v3" and out["spec_version"] == "3.0"
    assert out["data"]["nickname"] == "Mira" and out["data"]["creation_date"] == 1700000000
    assert read_card(card_to_v3_json(imp.card)).card == imp.card


def test_v3_defaults_do_not_grow_extras():
    card = Card(name="Plain")
    v3 = json.loads(card_to_v3_json(card))
    assert v3["data"]["group_only_greetings"] == [] and v3["data"]["extensions"] == {}
    assert read_card(card_to_v3_json(card)).card == card
    assert read_card(card_to_v2_json(card)).card == card


def test_newer_spec_version_warns_but_imports(v2_card):
    obj = {"spec": "chara_card_v3", "spec_version": "3.5", "data": v2_card["data"]}
    imp = read_json(obj)
    assert imp.card.name == "Captain Mira" and any("3.5" in w for w in imp.warnings)


def test_empty_mes_example_and_null_fields(v2_card):
    v2_card["data"]["mes_example"] = ""
    v2_card["data"]["personality"] = None
    v2_card["data"]["alternate_greetings"] = None
    c = read_json(v2_card).card
    assert c.example_dialogue == "" and c.personality == "" and c.alternate_greetings == []


def test_crlf_inside_strings_becomes_lf(v2_card):
    v2_card["data"]["mes_example"] = "<START>\r\n{{user}}: Hi\r\n{{char}}: Arr.\r\n<START>\r\n{{char}}: Yo"
    v2_card["data"]["description"] = "line one\rline two"
    c = read_json(v2_card).card
    assert c.example_dialogue == "<START>\n{{user}}: Hi\n{{char}}: Arr.\n<START>\n{{char}}: Yo"
    assert c.description == "line one\nline two"


def test_bom_and_utf16(v2_card):
    raw = json.dumps(v2_card, ensure_ascii=False).encode("utf-8")
    assert read_card(b"\xef\xbb\xbf" + raw).card.name == "Captain Mira"
    assert read_card(json.dumps(v2_card).encode("utf-16")).card.name == "Captain Mira"


def test_non_ascii_text_survives(v2_card):
    v2_card["data"]["first_mes"] = "Ça va? 🏴‍☠️ 你好"
    card = read_json(v2_card).card
    assert read_card(card_to_v2_json(card)).card.greeting == "Ça va? 🏴‍☠️ 你好"


def test_tags_as_comma_string_and_numbers():
    c = read_json({"name": "T", "tags": "a, b ,,c", "character_version": 2}).card
    assert c.tags == ["a", "b", "c"] and c.character_version == "2"


def test_nameless_card_takes_the_file_name():
    imp = read_card(json.dumps({"name": "", "description": "x"}).encode(), filename="Nameless Wonder.json")
    assert imp.card.name == "Nameless Wonder" and imp.warnings


def test_nameless_card_without_file_name_is_refused():
    with pytest.raises(CardInvalid, match="no name"):
        read_card(json.dumps({"name": " ", "description": "x"}).encode())


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2, 3], "not an object"),
        ({"foo": "bar"}, "not a character card"),
        ({"spec": "chara_card_v2", "data": "nope"}, "data"),
        ({"spec": "chara_card_v3"}, "data"),
        ({"spec": "chara_card_v2", "data": {"name": "X", "description": ["a"]}}, "description should be text"),
        ({"spec": "chara_card_v2", "data": {"name": "X", "alternate_greetings": {"a": 1}}}, "list of text"),
        ({"spec": "chara_card_v2", "data": {"name": "X", "extensions": []}}, "extensions"),
    ],
)
def test_malformed_json_cards(obj, match):
    with pytest.raises(CardInvalid, match=match):
        read_json(obj)


@pytest.mark.parametrize("raw", [b'{"name": "x", ', b"{'name': 'x'}", b'{"name": NaN}', b"\xff\xfe\x00"])
def test_broken_json_text(raw):
    with pytest.raises(CardInvalid):
        read_card(raw)


def test_not_a_card_file():
    with pytest.raises(CardInvalid, match="not a character card"):
        read_card(b"hello world")
    with pytest.raises(CardInvalid, match="JPEG or WebP"):
        read_card(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    with pytest.raises(CardInvalid, match="empty"):
        read_card(b"")


def test_read_from_path_and_missing_path(tmp_path, v2_card):
    p = tmp_path / "mira.json"
    p.write_text(json.dumps(v2_card))
    assert read_card(p).card.name == "Captain Mira"
    assert read_card(str(p)).card.name == "Captain Mira"
    with pytest.raises(CardInvalid, match="no file"):
        read_card(tmp_path / "absent.json")
    with pytest.raises(CardInvalid, match="folder"):
        read_card(tmp_path)


def test_v3_asset_urls_kept_embedded_ones_warned(v2_card):
    data = dict(v2_card["data"])
    data["assets"] = [
        {"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"},
        {"type": "background", "uri": "https://example.org/bg.png", "name": "main", "ext": "png"},
        {"type": "emotion", "uri": "embeded://assets/emotion/images/happy.png", "name": "happy", "ext": "png"},
    ]
    imp = read_json({"spec": "chara_card_v3", "spec_version": "3.0", "data": data})
    assert imp.card.extras["data"]["assets"] == [data["assets"][1]]
    assert any("emotion" in w for w in imp.warnings)
    out = json.loads(card_to_v3_json(imp.card))
    assert out["data"]["assets"] == [data["assets"][1]]


def test_v2_label_on_a_flat_card():
    imp = read_json({"spec": "chara_card_v2", "spec_version": "2.0", "name": "Flat", "first_mes": "hi"})
    assert imp.card.name == "Flat" and imp.card.greeting == "hi" and imp.source_format == "json-v1"
    assert any("V1" in w for w in imp.warnings)
