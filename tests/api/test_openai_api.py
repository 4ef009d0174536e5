"""The OpenAI-compatible API through the official `openai` package against a real
`python app.py serve` on the tiny model: models, chat (whole and streamed), text
completions, concurrent clients on different personas, errors, a client that leaves,
conversations written only when asked, and nothing on stdout."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.api.conftest import ADAPTED

HI = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def server(server_factory, adapted_home):
    return server_factory(adapted_home, "serve")


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _chat(client, model, seed=7, temperature=1.0, max_tokens=12, **kw):
    return client.chat.completions.create(model=model, messages=kw.pop("messages", HI), seed=seed,
                                          temperature=temperature, max_tokens=max_tokens, **kw)


def test_models_lists_every_persona_and_the_bare_base_model(client):
    rows = {m.id: m for m in client.models.list().data}
    assert set(ADAPTED) | {"professor-quill", "tiny-llama"} == set(rows)
    assert rows["captain-mara"].model_extra["name"] == "Captain Mara"
    assert rows["tiny-llama"].owned_by == "base"


def test_chat_answers_with_usage_and_length_finish(client):
    reply = _chat(client, "juniper", max_tokens=5)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "juniper"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    usage = reply.usage
    assert usage.completion_tokens == 5 and usage.prompt_tokens > 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The persona's card is in the prompt: the bare base model's prompt is much shorter.
    base = _chat(client, "tiny-llama", max_tokens=5)
    assert base.usage.prompt_tokens < usage.prompt_tokens


def test_persona_is_found_by_id_name_and_any_case(client):
    by_id = _chat(client, "captain-mara", max_tokens=6).choices[0].message.content
    assert _chat(client, "Captain Mara", max_tokens=6).choices[0].message.content == by_id
    assert _chat(client, "captain MARA", max_tokens=6).choices[0].message.content == by_id


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_text_joins_to_the_whole_answer(client, temperature):
    whole = _chat(client, "byte", temperature=temperature, max_tokens=10)
    chunks = list(_chat(client, "byte", temperature=temperature, max_tokens=10, stream=True,
                        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_ends_with_done(server):
    body = {"model": "byte", "messages": HI, "max_tokens": 3, "stream": True, "seed": 1}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_four_concurrent_clients_on_four_personas_each_get_their_solo_answer(client):
    solo = {p: _chat(client, p, seed=11, max_tokens=16).choices[0].message.content for p in ADAPTED}
    assert len(set(solo.values())) == len(ADAPTED)  # four voices: a mix-up would show
    together: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ADAPTED))

    def ask(persona):
        try:
            barrier.wait()
            together[persona] = _chat(client, persona, seed=11, max_tokens=16).choices[0].message.content
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in ADAPTED]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert together == solo


def test_greedy_concurrent_answers_equal_solo(client):
    solo = {p: _chat(client, p, temperature=0, max_tokens=8).choices[0].message.content for p in ADAPTED}
    together: dict[str, str] = {}
    threads = [threading.Thread(target=lambda p=p: together.__setitem__(p, _chat(client, p, temperature=0, max_tokens=8)
                                                                      .choices[0].message.content)) for p in ADAPTED]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == solo


def test_a_client_system_message_goes_after_the_card(client):
    plain = _chat(client, "juniper", max_tokens=3)
    extra = _chat(client, "juniper", max_tokens=3,
                  messages=[{"role": "system", "content": "Answer in exactly three words."}, *HI])
    assert extra.usage.prompt_tokens > plain.usage.prompt_tokens  # the card stays, the client's message is added


def test_stop_sequence_cuts_the_answer(client):
    full = _chat(client, "byte", seed=3, max_tokens=20).choices[0].message.content
    cut_at = full.strip()[3:6]
    assert cut_at
    cut = _chat(client, "byte", seed=3, max_tokens=20, stop=[cut_at])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(cut_at)]


def test_text_completion_uses_the_prompt_as_is_with_the_adapter(client):
    def text(model, **kw):
        return client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, seed=5, temperature=1.0, **kw)

    base = text("tiny-llama")
    assert base.object == "text_completion" and base.choices[0].finish_reason == "length"
    assert base.usage.completion_tokens == 8 and base.usage.prompt_tokens < 10  # no card, no template
    assert text("professor-quill").choices[0].text == base.choices[0].text  # no adapter: the base itself
    assert text("juniper").choices[0].text != base.choices[0].text  # Juniper's adapter speaks
    streamed = "".join(c.choices[0].text for c in text("juniper", stream=True) if c.choices)
    assert streamed == text("juniper").choices[0].text


@pytest.mark.parametrize(
    "kwargs, status, param",
    [
        ({"model": "nobody"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"temperature": 9}, 400, "temperature"),
        ({"messages": []}, 400, "messages"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ],
)
def test_bad_requests_get_openai_errors(client, kwargs, status, param):
    args = {"model": "juniper", "messages": HI, "max_tokens": 4, **kwargs}
    error = openai.NotFoundError if status == 404 else openai.BadRequestError
    with pytest.raises(error) as err:
        client.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.body
    assert body["param"] == param and body["message"] and body["type"] == "invalid_request_error"
    if status == 404:
        assert body["code"] == "model_not_found" and "juniper" in body["message"]


def test_broken_json_and_unknown_routes(server):
    r = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{server.base_url}/embeddings", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def _conversations(home) -> list[dict]:
    from storage.store import Store

    return Store(home).conversations.list()


def test_api_calls_write_no_conversation_unless_asked(client, adapted_home):
    before = len(_conversations(adapted_home))
    _chat(client, "juniper", max_tokens=3)
    assert len(_conversations(adapted_home)) == before


def test_conversation_header_appends_the_exchange(client, adapted_home):
    from storage.store import Store

    store = Store(adapted_home)
    conv = store.conversations.create("from the api")
    reply = _chat(client, "juniper", max_tokens=6, extra_headers={"X-Chorus-Conversation": conv["id"]},
                  messages=[{"role": "user", "content": "First question"}, {"role": "assistant", "content": "An answer"},
                            {"role": "user", "content": "Second question"}])
    path = store.conversations.path(conv["id"])
    assert [(m["role"], m["content"], m["persona_id"]) for m in path] == [
        ("user", "Second question", None), ("assistant", reply.choices[0].message.content.strip(), "juniper")]
    # The body field does the same; a conversation that does not exist is a 404 and nothing is written.
    _chat(client, "byte", max_tokens=4, extra_body={"chorus_conversation": conv["id"]})
    assert [m["persona_id"] for m in store.conversations.path(conv["id"])] == [None, "juniper", None, "byte"]
    with pytest.raises(openai.NotFoundError):
        _chat(client, "byte", max_tokens=4, extra_headers={"X-Chorus-Conversation": "no-such-conversation"})


def test_a_client_that_leaves_stops_its_row(client, server, adapted_home):
    from storage.store import Store

    store = Store(adapted_home)
    conv = store.conversations.create("left early")
    stream = client.chat.completions.create(model="juniper", messages=HI, max_tokens=1500, seed=1, temperature=1.0,
                                            stream=True, extra_headers={"X-Chorus-Conversation": conv["id"]})
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 3:
            break
    stream.close()
    t0 = time.time()
    quick = _chat(client, "byte", max_tokens=3)  # the engine is free again: no 1,500-token reply ahead of it
    assert quick.choices[0].finish_reason == "length" and time.time() - t0 < 20
    deadline = time.time() + 20
    while time.time() < deadline:  # the stopped reply is saved once its row has left
        path = store.conversations.path(conv["id"])
        if path and path[-1]["role"] == "assistant":
            break
        time.sleep(0.2)
    saved = path[-1]
    assert saved["role"] == "assistant" and saved["meta"]["stopped"] is True
    assert saved["meta"]["finish_reason"] == "stop"


def test_nothing_on_stdout(server, client):
    _chat(client, "juniper", max_tokens=2)
    assert server.stdout() == ""
    assert "Chorus is listening" in server.stderr() and "API only" in server.stderr()


def test_a_waiting_client_that_leaves_stops_its_row_too(server, adapted_home):
    """Not streaming: nothing is written to the client until the end, so only watching the
    connection can tell that it left."""
    from storage.store import Store

    store = Store(adapted_home)
    conv = store.conversations.create("left while waiting")
    body = {"model": "juniper", "messages": HI, "max_tokens": 1500, "min_tokens": 1500, "seed": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, headers={"X-Chorus-Conversation": conv["id"]}, timeout=3)
    deadline = time.time() + 30
    path = []
    while time.time() < deadline:
        path = store.conversations.path(conv["id"])
        if path and path[-1]["role"] == "assistant":
            break
        time.sleep(0.2)
    assert path and path[-1]["role"] == "assistant"
    assert path[-1]["meta"]["stopped"] is True and path[-1]["meta"]["finish_reason"] == "stop"
