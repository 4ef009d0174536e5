"""Every real export in tests/fixtures/chat-exports parses with the counts we counted by reading it."""

from datetime import datetime, timezone

import pytest

from core.chatimport import load_export

from .helpers import real

UTC = timezone.utc

# file, format, messages, text messages per speaker, skipped by kind, conversations, first, last
# (Counted by hand from the files; the comment says how.)
CASES = [
    ("instagram__joweich_chat-miner__test_export.json", "messenger", 2,
     {"John Doe": 1, "Jane Doe": 1}, {}, 1,
     datetime(2019, 12, 24, 11, 23, tzinfo=UTC), datetime(2020, 1, 17, 20, 49, tzinfo=UTC)),
    # 5 lines; roles: 8 assistant, 7 user, 4 system prompts
    ("openaijsonl__openai_openai-cookbook__toy_chat_fine_tuning.jsonl", "openai-jsonl", 19,
     {"assistant": 8, "user": 7}, {"system": 4}, 5, None, None),
    # 120 records, each human/gpt alternating: 240 + 240
    ("sharegpt__lm-sys_FastChat__dummy_conversation.excerpt120.json", "sharegpt", 480,
     {"human": 240, "gpt": 240}, {}, 120, None, None),
    # 60 records, 120 + 120 turns, 6 records carry a "system" prompt
    ("sharegpt__lm-sys_FastChat__dummy_conversation_with_system.excerpt60.json", "sharegpt", 246,
     {"human": 120, "gpt": 120}, {"system": 6}, 60, None, None),
    ("signal__joweich_chat-miner__test_export.txt", "signal", 2,
     {"Jane Doe": 1, "John Doe": 1}, {}, 1, datetime(2019, 12, 24, 12, 23), datetime(2020, 1, 17, 21, 49)),
    ("telegram__joweich_chat-miner__test_batch_export.json", "telegram", 2,
     {"Author 1": 1, "Author 2": 1}, {}, 1,
     datetime.fromtimestamp(1544006350, UTC), datetime.fromtimestamp(1544006964, UTC)),
    ("telegram__joweich_chat-miner__test_single_export.json", "telegram", 2,
     {"Author 1": 1, "Author 2": 1}, {}, 1,
     datetime.fromtimestamp(1544006350, UTC), datetime.fromtimestamp(1544006964, UTC)),
    # ids 1 (service), 3/7/8 (photo, voice, audio without text) are not text
    ("telegram__la-ninpre_tg2md__result_2020_int_from_id.json", "telegram", 13,
     {"test": 9}, {"media": 3, "system": 1}, 1, datetime(2020, 11, 12, 12, 53, 52), datetime(2020, 11, 12, 15, 5, 32)),
    # + ids 21-26: 24 and 25 are photos without text
    ("telegram__la-ninpre_tg2md__result_2021.json", "telegram", 19,
     {"test": 13}, {"media": 5, "system": 1}, 1, datetime(2020, 11, 12, 12, 53, 52), datetime(2021, 7, 14, 19, 20, 23)),
    # 4 system lines at the top, 4 <attached:> lines, 1 POLL block
    ("whatsapp__Pustur_whatsapp-chat-parser-website___chat.txt", "whatsapp", 52,
     {"Loris": 24, "John": 12, "Emily": 7}, {"media": 4, "system": 4, "poll": 1}, 1,
     datetime(2019, 6, 20, 15, 58, 47), datetime(2019, 6, 20, 16, 45, 28)),
    # 100 header lines, 3 without "Name:" (encryption, created group, added you)
    ("whatsapp__Pustur_whatsapp-chat-parser-website__old_example__chat.txt", "whatsapp", 100,
     {"Loris": 51, "Emily": 36, "John": 10}, {"system": 3}, 1,
     datetime(2019, 6, 20, 15, 58, 47), datetime(2019, 6, 20, 19, 54, 58)),
    ("whatsapp__joweich_chat-miner__test_bracket_mmddyy_24hrs.txt", "whatsapp", 9,
     {"John Doe": 3, "Jahn Doe": 1, "John-John Doe": 1, "John Doe 🤓": 1, "🤓": 1}, {"system": 2}, 1,
     datetime(2019, 1, 1, 11, 25), datetime(2021, 12, 30, 22, 1)),
    ("whatsapp__joweich_chat-miner__test_dateformat3.txt", "whatsapp", 4,
     {"John Doe": 2, "John-John Doe": 1, "Jahn Doe": 1}, {}, 1,
     datetime(2022, 12, 14, 13, 34), datetime(2022, 12, 24, 11, 35)),
    ("whatsapp__joweich_chat-miner__test_mmddyyyy_12hrs.txt", "whatsapp", 9,
     {"John Doe": 3, "Jahn Doe": 1, "John-John Doe": 1, "John Doe 🤓": 1, "🤓": 1}, {"system": 2}, 1,
     datetime(2019, 1, 1, 11, 25), datetime(2021, 12, 30, 22, 1)),
    ("whatsapp__joweich_chat-miner__test_unicode.txt", "whatsapp", 3,
     {"John Doe": 1, "John Doe 🤓": 1, "🤓": 1}, {}, 1, datetime(2022, 9, 10, 22, 37), datetime(2022, 9, 10, 22, 37)),
    # 23 headers in mixed layouts, all month-first; 3 system lines
    ("whatsapp__joweich_chat-miner__testlog.txt", "whatsapp", 23,
     {"John Doe": 10, "John-John Doe": 3, "Jahn Doe": 2, "John Doe 🤓": 2, "🤓": 2, "+12 345 578": 1},
     {"system": 3}, 1, datetime(2014, 12, 24, 17, 8), datetime(2022, 12, 24, 13, 1)),
]


@pytest.mark.parametrize("name,fmt,messages,speakers,skipped,convs,first,last", CASES, ids=[c[0][:40] for c in CASES])
def test_real_fixture_counts(name, fmt, messages, speakers, skipped, convs, first, last):
    r = load_export(real(name))
    assert r.format == fmt
    assert r.message_count == messages
    assert r.speakers == speakers
    assert r.skipped == skipped
    assert len(r.conversations) == convs
    assert r.first == first
    assert r.last == last
    assert sum(len(c.messages) for c in r.conversations) == messages


def test_every_fixture_is_listed():
    names = {p.name for p in real("").iterdir() if p.is_file() and p.name != "SOURCES.md"}
    assert names == {c[0] for c in CASES}


def test_whatsapp_bodies_and_continuations():
    r = load_export(real("whatsapp__Pustur_whatsapp-chat-parser-website___chat.txt"))
    msgs = r.conversations[0].messages
    emily = [m for m in msgs if m.speaker == "Emily" and m.text.startswith("Come on")][0]
    assert emily.text == "Come on...\ndon't be so mysterious and show us!"
    assert msgs[-1].text == "Links:\n- https://github.com/Pustur/whatsapp-chat-parser\n- https://github.com/Pustur/whatsapp-chat-parser-website"
    poll = [m for m in msgs if m.kind == "poll"]
    assert len(poll) == 1 and "OPTION" not in " ".join(m.text for m in msgs if m.kind == "text")
    media = [m for m in msgs if m.kind == "media"]
    assert media[0].media == "<attached: 00000001-PHOTO-2019-06-20-16-00-15.jpg>" and media[0].text == ""


def test_whatsapp_colon_without_space_and_colon_in_body():
    r = load_export(real("whatsapp__joweich_chat-miner__test_bracket_mmddyy_24hrs.txt"))
    texts = [(m.speaker, m.text) for m in r.conversations[0].messages if m.kind == "text"]
    assert ("John Doe", ".") in texts
    assert ("John-John Doe", "Lorem ipsum : dolor sit amet.") in texts


def test_telegram_entity_text_is_flattened():
    r = load_export(real("telegram__joweich_chat-miner__test_single_export.json"))
    assert [m.text for m in r.conversations[0].messages] == ["Minimal Message", "Link:https://telegram.org/"]
    r = load_export(real("telegram__la-ninpre_tg2md__result_2021.json"))
    by_text = {m.text: m for m in r.conversations[0].messages}
    assert by_text["photo with text"].media == "photo"
    assert "тестирование utf-8." in by_text


def test_signal_continuation():
    r = load_export(real("signal__joweich_chat-miner__test_export.txt"))
    assert r.conversations[0].messages[1].text == "Hello\nJane!"
