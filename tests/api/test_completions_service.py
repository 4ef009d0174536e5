"""core.completions without HTTP: which persona a `model` names, how a chat prompt is put
together (card first, the client's system text after it), stop sequences split across
pieces, and a reply appended to a conversation only when one is named."""

from __future__ import annotations

import pytest

from core.completions import Completions, ModelNotFound, RequestInvalid, StopScanner
from core.engine import GenerationSettings


@pytest.fixture
def service(tiny_engine, chorus_home):
    from core.chat import ChatService
    from core.starter import seed_starters
    from storage.store import Store

    store = Store(chorus_home)
    seed_starters(store)
    return Completions(ChatService(store, tiny_engine))


def test_model_names_a_persona_by_id_name_or_any_case_else_the_base(service):
    assert service.resolve("captain-mara")["id"] == "captain-mara"
    assert service.resolve("Captain Mara")["id"] == "captain-mara"
    assert service.resolve("  CAPTAIN mara ")["id"] == "captain-mara"
    assert service.resolve("tiny-llama") is None  # the bare base model
    with pytest.raises(ModelNotFound, match="juniper"):
        service.resolve("nobody")


def test_client_system_text_follows_the_card_and_turns_keep_their_order(service):
    messages = [{"role": "user", "content": "first-user-turn"}, {"role": "system", "content": "client-rule-xyz"},
                {"role": "assistant", "content": "an-answer"}, {"role": "user", "content": "second-user-turn"}]
    prepared = service.prepare_chat("juniper", messages, max_new_tokens=8)
    text = service.engine.tokenizer.decode(prepared.input_ids)
    card = text.index("Juniper")
    assert card < text.index("client-rule-xyz") < text.index("first-user-turn") < text.index("an-answer") < text.index("second-user-turn")
    assert prepared.adapter is None and prepared.last_user == "second-user-turn"
    bare = service.prepare_chat("tiny-llama", messages, max_new_tokens=8)
    assert "Juniper" not in service.engine.tokenizer.decode(bare.input_ids)


def test_oldest_turns_go_first_and_an_oversized_last_turn_is_refused(service):
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn-{i} " + "words " * 150} for i in range(30)]
    prepared = service.prepare_chat("juniper", long, max_new_tokens=8)
    text = service.engine.tokenizer.decode(prepared.input_ids)
    assert prepared.dropped_turns > 0 and "turn-29" in text and "turn-0 " not in text
    with pytest.raises(RequestInvalid) as err:
        service.prepare_chat("juniper", [{"role": "user", "content": "word " * 5000}], max_new_tokens=8)
    assert err.value.code == "context_length_exceeded"


@pytest.mark.parametrize("pieces, shown", [
    (["Hello wor", "ld. END", " more"], "Hello world. "),
    (["abc E", "N", "D tail"], "abc "),
    (["no stop ", "at all E"], "no stop at all E"),
])
def test_stop_scanner_cuts_before_a_stop_split_across_pieces(pieces, shown):
    scanner = StopScanner(("END",))
    out = "".join(scanner.feed(p) for p in pieces) + scanner.finish()
    assert out == shown
    assert scanner.hit == ("END" in "".join(pieces))


def test_reply_is_appended_only_to_a_named_conversation(service):
    store = service.store
    prepared = service.prepare_chat("juniper", [{"role": "user", "content": "Hi there"}], max_new_tokens=4)
    before = len(store.conversations.list())
    reply = service.generate(prepared, GenerationSettings(max_new_tokens=4, seed=1))
    assert "".join(reply) == reply.text and reply.finish_reason in ("length", "stop")
    assert len(store.conversations.list()) == before
    conv = store.conversations.create()
    prepared = service.prepare_chat("juniper", [{"role": "user", "content": "Hi there"}], max_new_tokens=4)
    reply = service.generate(prepared, GenerationSettings(max_new_tokens=4, seed=1), conversation_id=conv["id"])
    text = "".join(reply)
    path = store.conversations.path(conv["id"])
    assert [(m["role"], m["content"], m["persona_id"]) for m in path] == [("user", "Hi there", None), ("assistant", text.strip(), "juniper")]
    assert path[-1]["meta"]["source"] == "api" and reply.usage["completion_tokens"] == 4
