"""The same chat exported with four phone locales gives the same messages."""

import pytest

from core.chatimport import load_export

from .helpers import edge

LOCALES = ["wa_same_chat_us.txt", "wa_same_chat_de.txt", "wa_same_chat_gb.txt", "wa_same_chat_es.txt",
           "wa_export_with_junk.zip", "wa_utf16le_bom.txt"]


def signature(path):
    r = load_export(path)
    out = []
    for m in r.conversations[0].messages:
        # System lines are worded in the phone's language; only their kind must agree.
        out.append((m.kind, m.speaker, m.time.replace(second=0), m.text if m.kind == "text" else ""))
    return out


@pytest.mark.parametrize("other", LOCALES[1:])
def test_same_messages_in_every_locale(other):
    assert signature(edge(other)) == signature(edge(LOCALES[0]))


def test_us_locale_reads_12_hour_clock():
    sig = signature(edge("wa_same_chat_us.txt"))
    assert sig[-1][2].hour == 20 and sig[1][2].hour == 9
