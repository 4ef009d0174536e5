"""Conversation export: Markdown and OpenAI chat JSONL keep who said what."""

import json
import re
from datetime import datetime

import pytest

from core.cards import conversation_to_markdown, conversation_to_openai_jsonl

MESSAGES = [
    {"role": "system", "content": "Group chat in a tavern.", "persona_name": None, "persona_id": None, "created": None},
    {"role": "user", "content": "Hello, everyone!", "persona_name": None, "persona_id": None, "created": 1714561200},
    {"role": "assistant", "content": "Arr, welcome.", "persona_name": "Captain Mira", "persona_id": "p-1", "created": 1714561260},
    {"role": "assistant", "content": "*bows*\nGreetings.", "persona_name": "Zoë the Bard", "persona_id": "p-2",
     "created": "2024-05-01T11:02:00"},
    {"role": "assistant", "content": "Another round?", "persona_name": "Captain Mira", "persona_id": "p-1",
     "created": datetime(2024, 5, 1, 11, 3)},
]


def test_markdown():
    md = conversation_to_markdown("Tavern night", MESSAGES)
    assert md.startswith("# Tavern night\n")
    assert "**You** · 2024-05-01 11:00 UTC\n\nHello, everyone!" in md
    assert "**Captain Mira** · 2024-05-01 11:01 UTC\n\nArr, welcome." in md
    assert "**Zoë the Bard** · 2024-05-01 11:02\n\n*bows*\nGreetings." in md
    assert "> Group chat in a tavern." in md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_escapes_names():
    md = conversation_to_markdown("*bold* #title", [{"role": "assistant", "content": "x", "persona_name": "A_B*"}])
    assert md.startswith("# \\*bold\\* \\#title") and "**A\\_B\\***" in md


def test_jsonl_keeps_the_persona():
    out = conversation_to_openai_jsonl(MESSAGES)
    assert out.endswith("\n") and out.count("\n") == 1
    line = json.loads(out)
    msgs = line["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "assistant", "assistant"]
    assert msgs[2]["name"] == "Captain_Mira" and msgs[4]["name"] == "Captain_Mira"
    assert msgs[3]["name"] == "Zoe_the_Bard"
    for m in msgs:
        assert set(m) <= {"role", "content", "name"}  # what OpenAI's validator accepts
        if "name" in m:
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", m["name"])
    assert line["metadata"]["personas"]["Zoe_the_Bard"] == {"persona_id": "p-2", "persona_name": "Zoë the Bard"}


def test_jsonl_names_stay_apart_and_valid():
    msgs = [
        {"role": "assistant", "content": "a", "persona_name": "Mira!", "persona_id": 1},
        {"role": "assistant", "content": "b", "persona_name": "Mira?", "persona_id": 2},
        {"role": "assistant", "content": "c", "persona_name": "日本語", "persona_id": 3},
        {"role": "assistant", "content": "d", "persona_name": "x" * 100, "persona_id": 4},
    ]
    line = json.loads(conversation_to_openai_jsonl(msgs, include_metadata=False))
    names = [m["name"] for m in line["messages"]]
    assert names[:3] == ["Mira", "Mira_2", "persona"] and len(names[3]) == 64
    assert "metadata" not in line


def test_jsonl_empty_and_bad_role():
    assert conversation_to_openai_jsonl([]) == ""
    with pytest.raises(ValueError):
        conversation_to_openai_jsonl([{"role": "narrator", "content": "x"}])
