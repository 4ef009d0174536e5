"""Our own files for every edge case in FORMATS.md (tests/fixtures/chat-exports/edge/)."""

from datetime import datetime, timezone

import pytest

from core.chatimport import load_export

from .helpers import edge

UTC = timezone.utc


def texts(r):
    return [(m.speaker, m.text) for c in r.conversations for m in c.messages if m.kind == "text"]


def kinds(r):
    return [m.kind for c in r.conversations for m in c.messages]


@pytest.mark.parametrize("name,fmt,messages,speakers,skipped", [
    ("wa_placeholders_many_languages.txt", "whatsapp", 14, {"Ana": 1}, {"media": 7, "deleted": 5, "poll": 1}),
    ("wa_ios_group.txt", "whatsapp", 10, {"Anna": 1, "Cleo": 1},
     {"system": 3, "media": 2, "deleted": 1, "poll": 1, "view_once": 1}),
    ("telegram_full_account.json", "telegram", 12,
     {"Me": 3, "Bob": 2, "Carol": 1, "Deleted Account (user999)": 1, "Old": 1}, {"system": 2, "media": 1, "poll": 1}),
    ("messenger", "messenger", 7, {"Tom": 2, "Zsófia Buzás": 1}, {"deleted": 1, "media": 1, "reaction": 1, "system": 1}),
    ("messenger_export.zip", "messenger", 7, {"Tom": 2, "Zsófia Buzás": 1},
     {"deleted": 1, "media": 1, "reaction": 1, "system": 1}),
    ("discord.json", "discord-json", 8, {"Alice": 1, "bob#1234": 1, "carol_the-dev": 1}, {"system": 3, "media": 2}),
    ("discord.txt", "discord-txt", 5, {"Alice": 1, "bob#1234": 1, "carol": 1}, {"media": 1, "system": 1}),
    ("discord.csv", "discord-csv", 4, {"Alice": 1, "bob#1234": 1}, {"media": 1, "system": 1}),
    ("signal_export.md", "signal", 5, {"Alice": 2, "Bob": 1}, {"deleted": 1, "media": 1}),
    ("imessage.txt", "imessage", 6, {"Me": 3, "+15555550100": 1}, {"media": 1, "system": 1}),
    ("sillytavern_chat.jsonl", "sillytavern", 4, {"Seraphina": 2, "You": 1}, {"system": 1}),
    ("sharegpt.jsonl", "sharegpt", 6, {"human": 2, "gpt": 2}, {"system": 2}),
    ("transcript.txt", "transcript", 4, {"Alice": 2, "Bob": 2}, {}),
    ("wa_export_with_junk.zip", "whatsapp", 9, {"Jean-Luc": 2, "Zoë 👩‍👩‍👧": 2, "+49 170 1234567": 1, "Anna": 1},
     {"deleted": 1, "media": 1, "system": 1}),
])
def test_edge_counts(name, fmt, messages, speakers, skipped):
    r = load_export(edge(name))
    assert (r.format, r.message_count, r.speakers, r.skipped) == (fmt, messages, speakers, skipped)


def test_placeholders_never_reach_text():
    r = load_export(edge("wa_placeholders_many_languages.txt"))
    assert texts(r) == [("Ana", "Esto sí es texto")]
    r = load_export(edge("wa_ios_group.txt"))
    assert texts(r) == [("Anna", "hello: everyone"), ("Cleo", "see you then")]  # edited marker removed


def test_ios_group_name_is_not_a_speaker():
    r = load_export(edge("wa_ios_group.txt"))
    msgs = r.conversations[0].messages
    assert msgs[0].kind == "system" and msgs[0].speaker is None
    assert "Family 🏠" not in r.speakers


def test_caption_after_file_attached_is_kept_apart():
    from core.chatimport.whatsapp import classify

    assert classify("IMG-20221225-WA0001.jpg (file attached)\nlook at this", True)[:3] == (
        "text", "look at this", "IMG-20221225-WA0001.jpg (file attached)")


@pytest.mark.parametrize("name,first,last", [
    ("wa_arabic_digits.txt", datetime(2022, 12, 25, 9, 6), datetime(2022, 12, 25, 21, 5)),
    ("wa_thai_buddhist.txt", datetime(2022, 12, 25, 21, 5), datetime(2022, 12, 26, 8, 0)),
    ("wa_japanese_era.txt", datetime(2022, 12, 25, 21, 5), datetime(2022, 12, 26, 8, 0)),
    ("wa_time_first.txt", datetime(2022, 12, 25, 21, 5), datetime(2022, 12, 26, 8, 0)),
    ("wa_dotted_times.txt", datetime(2022, 12, 25, 21, 5), datetime(2022, 12, 26, 8, 0)),  # 2- and 4-digit years
    ("wa_late_evidence_dmy.txt", datetime(2023, 2, 1, 10, 0), datetime(2023, 2, 13, 10, 0)),
    ("wa_ambiguous_by_order.txt", datetime(2023, 2, 1, 10, 0), datetime(2023, 3, 2, 10, 0)),
])
def test_calendar_and_layout_variants(name, first, last):
    r = load_export(edge(name))
    assert (r.first, r.last) == (first, last)
    assert r.message_count == sum(r.speakers.values())


def test_day_month_decided_once_per_file():
    r = load_export(edge("wa_late_evidence_dmy.txt"))
    times = [m.time for m in r.conversations[0].messages]
    assert times == [datetime(2023, 2, d, 10) for d in (1, 2, 3, 13)]  # not Jan 2, Feb 2...
    assert r.notes == []


def test_undecidable_day_month_is_said():
    r = load_export(edge("wa_fully_ambiguous.txt"))
    assert len(r.notes) == 1 and "day/month" in r.notes[0]


def test_direction_marks_and_phone_author():
    r = load_export(edge("wa_same_chat_gb.txt"))
    assert "+49 170 1234567" in r.speakers  # U+202A...U+202C stripped


def test_emoji_sequences_survive():
    r = load_export(edge("wa_same_chat_us.txt"))
    assert ("Zoë 👩‍👩‍👧", "👋🏽 hi all") in texts(r)
    assert ("Anna", "Merry Christmas! 🎄🇩🇪") in texts(r)


def test_continuation_line_that_looks_like_a_date():
    r = load_export(edge("wa_same_chat_us.txt"))
    assert ("Jean-Luc", "a date to remember:\n12/25/22, 9:08 was great") in texts(r)


def test_telegram_shapes():
    r = load_export(edge("telegram_full_account.json"))
    assert [c.title for c in r.conversations] == ["Bob", "Group", "Saved Messages", "Old"]
    bob = list(r.conversations[0].messages)
    assert bob[1].text == "see this 🔥"
    assert bob[2].text == "only entities, id repeated"  # text_entities only, duplicate id kept
    assert bob[3].text == "print(1)"
    assert bob[5].forwarded and bob[5].text == "forwarded words"
    saved = r.conversations[2].messages[0]
    assert saved.time == datetime(2023, 2, 1, 10, 2, tzinfo=UTC) and saved.media == "photo"


def test_messenger_order_mojibake_duplicates():
    r = load_export(edge("messenger"))
    msgs = r.conversations[0].messages
    assert r.conversations[0].title == "Zsófia Buzás"
    assert [m.kind for m in msgs] == ["system", "text", "deleted", "text", "media", "reaction", "text"]
    assert [m.text for m in msgs if m.kind == "text"] == ["first message", "Szia! Hogy vagy? 😊", "last one 👍"]
    assert all(a.time <= b.time for a, b in zip(msgs, msgs[1:]))
    assert any("repeated" in n for n in r.notes)


def test_discord_details():
    r = load_export(edge("discord.json"))
    assert r.conversations[0].title == "Test Server / general"
    assert any("messageCount" in n for n in r.notes)
    m = [m for m in r.conversations[0].messages if m.kind == "media"]
    assert [x.media for x in m] == ["x.png", "sticker Wave"]
    r = load_export(edge("discord.csv"))
    assert ("Alice", 'hi, "everyone"\nthis spans lines') in texts(r)
    r = load_export(edge("discord.txt"))
    assert ("bob#1234", "hello Alice\n\nsecond paragraph") in texts(r)
    assert ("carol", "[not a header] just text") in texts(r)


def test_signal_quotes_reactions_attachments():
    r = load_export(edge("signal_export.md"))
    assert texts(r) == [("Alice", "hello there"), ("Bob", "hi Alice!"), ("Alice", "the report")]


def test_imessage_replies_in_time_order():
    r = load_export(edge("imessage.txt"))
    msgs = r.conversations[0].messages
    assert [m.time for m in msgs] == sorted(m.time for m in msgs)
    assert ("Me", "That was fun\nwith two lines") in texts(r)
    assert not any("Loved by" in t for _, t in texts(r))


def test_transcript_keeps_colon_lines_that_are_not_speakers():
    r = load_export(edge("transcript.txt"))
    assert texts(r)[1] == ("Bob", "hey\nNote: this line is Bob's, not a speaker")
    assert texts(r)[3] == ("Bob", "fine: thanks")


def test_encodings_give_the_same_chat():
    base = texts(load_export(edge("wa_same_chat_us.txt")))
    assert texts(load_export(edge("wa_utf16le_bom.txt"))) == base
    assert texts(load_export(edge("wa_bom_mixed_newlines.txt"))) == base
