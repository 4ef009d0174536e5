"""Size and nesting limits: an overlong message is cut with a note, an absurd line or JSON
item is refused before it is read whole, and JSON Python cannot read is a clear error."""

import json

import pytest

from core.chatimport import load_export
from core.chatimport.detect import sniff_text
from core.chatimport.model import MAX_ITEM_CHARS, MAX_MESSAGE_CHARS
from core.errors import ExportFormatUnknown, ExportInvalid

LONG = MAX_MESSAGE_CHARS + 500_000
WA = "12/01/2020, 10:00 - Ann: hi there\n12/01/2020, 10:01 - Bob: hello\n"


def _telegram(texts: list[str], extra: str = "") -> str:
    msgs = [{"id": i, "type": "message", "date": "2020-01-01T00:00:00", "from": "Ann" if i % 2 else "Bob", "text": t}
            for i, t in enumerate(texts)]
    return json.dumps({"name": "x", "type": "personal_chat", "id": 1, "messages": msgs})[:-1] + extra + "}"


@pytest.mark.parametrize("body", ["x" * LONG, "\n".join(["y" * 99] * (LONG // 100))], ids=["one-line", "many-lines"])
def test_an_overlong_whatsapp_message_is_cut_with_a_note(tmp_path, body):
    path = tmp_path / "chat.txt"
    path.write_text(WA + f"12/01/2020, 10:02 - Ann: {body}\n12/01/2020, 10:03 - Bob: bye\n")
    result = load_export(path)
    texts = [m.text for m in result.conversations[0].messages]
    assert [len(t) for t in texts] == [8, 5, MAX_MESSAGE_CHARS, 3]
    assert texts[2] == body[:MAX_MESSAGE_CHARS]
    assert result.conversations[0].messages[2].cut
    assert f"1 message longer than {MAX_MESSAGE_CHARS:,} characters was cut to that length." in result.notes


def test_overlong_telegram_messages_are_cut_and_counted(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(_telegram(["hi", "a" * LONG, "ok", "b" * LONG]))
    result = load_export(path)
    assert [len(m.text) for m in result.conversations[0].messages] == [2, MAX_MESSAGE_CHARS, 2, MAX_MESSAGE_CHARS]
    assert result.speakers == {"Ann": 2, "Bob": 2}
    assert f"2 messages longer than {MAX_MESSAGE_CHARS:,} characters were cut to that length." in result.notes


def test_a_line_longer_than_the_item_limit_is_refused(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_text(WA + "12/01/2020, 10:02 - Ann: " + "z" * MAX_ITEM_CHARS + "\n")
    with pytest.raises(ExportInvalid, match=f"'chat.txt' line 3 is longer than {MAX_ITEM_CHARS:,} characters"):
        load_export(path)


def test_a_jsonl_line_longer_than_the_item_limit_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    line = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    path.write_text(line + '{"messages": [{"role": "user", "content": "' + "z" * MAX_ITEM_CHARS + '"}]}\n')
    with pytest.raises(ExportInvalid, match="line 2 is longer than"):
        load_export(path)


def test_a_huge_csv_field_is_refused(tmp_path):
    path = tmp_path / "chat.csv"
    head = '"AuthorID","Author","Date","Content","Attachments","Reactions"\n"1","Ann","2020-01-01","hi","",""\n'
    path.write_text(head + '"2","Bob","2020-01-01","' + "line\n" * (MAX_ITEM_CHARS // 5 + 1) + '","",""\n')
    with pytest.raises(ExportInvalid, match="not valid CSV at line"):
        load_export(path)


def test_a_number_python_will_not_read_is_a_clear_error(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(_telegram(["hi", "ho"], ', "extra": ' + "9" * 5000))
    with pytest.raises(ExportInvalid, match="is not valid JSON near character"):
        load_export(path)
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [], "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(ExportInvalid, match="line 2 is not valid JSON"):
        load_export(lines)


def test_deep_nesting_in_the_sniffed_head_is_just_not_a_format():
    nested = '{"messages": ' + "[" * 100_000
    assert sniff_text(nested) is None
    assert sniff_text(nested + "\n" + '{"messages": []}\n') is None


def test_deeply_nested_messenger_file_is_refused_clearly(tmp_path):
    path = tmp_path / "message_1.json"
    path.write_text('{"participants": [{"name": "A"}], "messages": [{"sender_name": "A", "timestamp_ms": 1, '
                    '"content": "hi"}, ' + "[" * 100_000 + "]" * 100_000 + "]}")
    with pytest.raises(ExportInvalid, match="nests its JSON too deeply"):
        load_export(path)


def test_a_messenger_file_without_a_message_list_is_refused(tmp_path):
    path = tmp_path / "message_1.json"
    path.write_text('{"participants": [{"name": "A"}], "sender_name": "A", "timestamp_ms": 1, "title": "t"}')
    with pytest.raises(ExportInvalid, match="has no list of messages"):
        load_export(path)


def test_nested_json_with_no_recognisable_format(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ExportFormatUnknown, match="not a chat export"):
        load_export(path)
