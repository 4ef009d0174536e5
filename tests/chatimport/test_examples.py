"""The training-example builder: roles, merging, sessions, windows, scrubbing, the time split."""

from datetime import timedelta

import pytest

from core.chatimport import build_examples, load_export

from .helpers import edge, real


def write(tmp_path, lines, name="chat.txt"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_export(p)


def test_one_to_one_chat_roles_merge_and_sessions(tmp_path):
    r = write(tmp_path, [
        "01/03/2023, 10:00 - Bob: hi",
        "01/03/2023, 10:01 - Bob: you there?",
        "01/03/2023, 10:02 - Alice: yes",
        "01/03/2023, 10:02 - Alice: <Media omitted>",
        "01/03/2023, 10:03 - Alice: what's up",
        "01/03/2023, 10:04 - Bob: nothing",
        "02/03/2023, 18:00 - Bob: new day",  # > 6 h later: a new session
        "02/03/2023, 18:05 - Alice: hello again",
        "02/03/2023, 18:06 - Bob: bye",  # trailing turn with no reply
    ])
    ex = build_examples(r, "  alice ", val_fraction=0.5)
    assert ex.train == [{"messages": [
        {"role": "user", "content": "hi\nyou there?"},
        {"role": "assistant", "content": "yes\nwhat's up"},
    ], "time": "2023-03-01T10:03:00"}]
    assert ex.validation == [{"messages": [
        {"role": "user", "content": "new day"},
        {"role": "assistant", "content": "hello again"},
    ], "time": "2023-03-02T18:05:00"}]
    rep = ex.report
    assert rep["speaker"] == "Alice" and rep["sessions"] == 2
    assert rep["dropped"]["media"] == 1
    assert rep["dropped"]["trailing turns with no reply"] == 2  # "nothing" and "bye"
    assert rep["turns_kept"] == 4 and rep["assistant_turns"] == 2
    assert rep["tokens"] == 3 + 3 + 2 + 2  # whitespace words over all four contents
    assert "whitespace" in rep["token_counter"]
    assert rep["messages_per_speaker"] == {"Bob": 5, "Alice": 3}


def test_group_chat_prefixes_names():
    r = load_export(real("whatsapp__Pustur_whatsapp-chat-parser-website___chat.txt"))
    ex = build_examples(r, "Loris", val_fraction=0)
    first = ex.train[0]["messages"]
    assert first[0] == {"role": "user", "content": "John: Hey 👋"}
    assert first[1]["role"] == "assistant" and first[1]["content"].startswith("Welcome to the chat example!")
    for e in ex.train:
        roles = [m["role"] for m in e["messages"]]
        assert all(a != b for a, b in zip(roles, roles[1:]))  # alternating
        assert roles[-1] == "assistant"
        for m in e["messages"]:
            assert "<attached:" not in m["content"] and "POLL:" not in m["content"]
    assert ex.report["dropped"]["media"] == 4 and ex.report["dropped"]["poll"] == 1
    assert ex.report["dropped"]["system"] == 4


def test_every_assistant_turn_lands_in_exactly_one_window():
    r = load_export(real("whatsapp__Pustur_whatsapp-chat-parser-website__old_example__chat.txt"))
    whole = build_examples(r, "Emily", max_turns=1000, val_fraction=0)
    small = build_examples(r, "Emily", max_turns=4, val_fraction=0)
    def replies(ex):
        return [m["content"] for e in ex.train for m in e["messages"] if m["role"] == "assistant"]
    assert replies(small) == replies(whole)
    assert all(len(e["messages"]) <= 4 for e in small.train)


def test_validation_is_the_most_recent_part():
    r = load_export(real("whatsapp__Pustur_whatsapp-chat-parser-website__old_example__chat.txt"))
    ex = build_examples(r, "Loris", max_turns=4, val_fraction=0.25, session_gap=timedelta(minutes=30))
    assert ex.validation and ex.train
    assert max(e["time"] for e in ex.train) <= min(e["time"] for e in ex.validation)
    assert len(ex.validation) == round((len(ex.train) + len(ex.validation)) * 0.25)


def test_scrub(tmp_path):
    r = write(tmp_path, [
        "01/03/2023, 10:00 - +49 170 1234567: mail me at bob.smith@example.org",
        "01/03/2023, 10:01 - Alice: call +1 (555) 010-0199 or see https://example.com/x?y=1 on 12/03/2023 at 10:30",
        "01/03/2023, 10:02 - Carol: ok",
    ])
    ex = build_examples(r, "alice", scrub=True, val_fraction=0)
    msgs = ex.train[0]["messages"]
    assert msgs[0]["content"] == "[phone]: mail me at [email]"
    assert msgs[1]["content"] == "call [phone] or see [url] on 12/03/2023 at 10:30"
    assert ex.report["scrubbed"] == {"url": 1, "email": 1, "phone": 2}


def test_count_tokens_and_forwarded_are_used():
    r = load_export(edge("telegram_full_account.json"))
    ex = build_examples(r, "me", count_tokens=len, val_fraction=0)
    assert ex.report["token_counter"] == "count_tokens"
    assert ex.report["tokens"] == sum(len(m["content"]) for e in ex.train for m in e["messages"])
    assert ex.report["dropped"]["forwarded"] == 1


def test_llm_formats_have_no_times():
    r = load_export(real("sharegpt__lm-sys_FastChat__dummy_conversation.excerpt120.json"))
    ex = build_examples(r, "gpt")
    # 120 distinct examples, but only 16 distinct replies: every held-out one was trained on
    assert len(ex.train) + len(ex.validation) + ex.report["held_out_honesty"]["validation_examples_removed"] == 120
    assert ex.train[0]["time"] is None
    assert ex.train[0]["messages"][0] == {"role": "user", "content": "Who are you?"}


def test_bad_arguments():
    r = load_export(real("signal__joweich_chat-miner__test_export.txt"))
    with pytest.raises(ValueError):
        build_examples(r, "John Doe", max_turns=1)
    with pytest.raises(ValueError):
        build_examples(r, "John Doe", val_fraction=1.0)
