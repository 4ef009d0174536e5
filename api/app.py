"""The OpenAI-compatible HTTP face under `/v1`: models, chat completions, text completions.

Each route checks the key (api/auth.py), validates the body (api/openai_schema.py), asks
core.completions for the answer and shapes it as OpenAI does, streamed as server-sent
events or whole. Generation runs in worker threads; a client that goes away (noticed by
polling the connection, or by its stream being cancelled) sets its stop event, so its row
leaves the engine after the current token. Errors are OpenAI's error JSON: 400 for bad
parameters, 401 for keys, 404 for an unknown persona, 503 while the model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.auth import ApiKeys
from api.openai_schema import BadRequest, ChatRequest, TextRequest, error_body, parse
from core.completions import Completions, ModelNotFound, RequestInvalid
from core.errors import ChorusError, NotFound

CONVERSATION_HEADER = "X-Chorus-Conversation"
_END = object()
DISCONNECT_POLL_S = 0.2


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def _response(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body, status_code=exc.status, headers=headers)


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BadRequest):
        return ApiError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, RequestInvalid):
        return ApiError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc), code="not_found")
    if isinstance(exc, ChorusError):  # a setting the engine refuses, a message too long to store
        return ApiError(400, str(exc))
    raise exc


def create_router(runtime, keys: ApiKeys, adapters=None) -> APIRouter:
    """`adapters`: core.served_adapters.ServedAdapters when `serve` takes adapters by name."""
    router = APIRouter(prefix="/v1")

    def service() -> Completions:
        from core.runtime import ModelLoading

        try:
            return Completions(runtime.chat, adapters)
        except ModelLoading as exc:
            raise ApiError(503, str(exc), "server_error", code="model_loading") from None
        except ChorusError as exc:  # the model failed to load
            raise ApiError(503, str(exc), "server_error", code="model_unavailable") from None

    def check_key(request: Request) -> None:
        why = keys.check(request.headers.get("authorization"))
        if why:
            raise ApiError(401, why, code="invalid_api_key")

    async def body(request: Request) -> dict:
        try:
            return json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.") from None

    def conversation(request: Request, req) -> str | None:
        header = (request.headers.get(CONVERSATION_HEADER) or "").strip() or None
        field = (req.chorus_conversation or "").strip() or None
        if header and field and header != field:
            raise ApiError(400, f"The {CONVERSATION_HEADER} header and chorus_conversation name different conversations.",
                           param="chorus_conversation")
        return header or field

    @router.get("/models")
    async def models(request: Request):
        try:
            check_key(request)
            rows = service().models()
        except ApiError as exc:
            return _response(exc)
        created = int(runtime.started)
        base = rows[-1]["id"]
        return {"object": "list", "data": [
            {"id": r["id"], "object": "model", "created": created, "owned_by": "chorus" if r["persona"] or r.get("adapter") else "base",
             "name": r["name"], **({"parent": base} if r.get("adapter") else {})}
            for r in rows]}

    async def answer(request: Request, schema, chat: bool):
        try:
            check_key(request)
            req = parse(schema, await body(request))
            settings = req.settings()
            conv = conversation(request, req)
            svc = service()
            stop = threading.Event()

            def start():
                if chat:
                    prepared = svc.prepare_chat(req.model, req.turns(), req.limit())
                else:
                    prepared = svc.prepare_text(req.model, req.prompt, req.limit())
                return svc.generate(prepared, settings, stop, conv)

            gen = await anyio.to_thread.run_sync(start)
        except Exception as exc:
            return _response(_as_api_error(exc))
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": gen.prepared.model}
        if gen.prepared.warning:
            meta["chorus_warning"] = gen.prepared.warning
        if req.stream:
            events = _chat_events if chat else _text_events
            return StreamingResponse(events(gen, stop, request, meta, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await _drain(gen, stop, request)
        except ChorusError as exc:
            return _response(ApiError(500, str(exc), "server_error"))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": gen.text, "refusal": None},
                      "logprobs": None, "finish_reason": gen.finish_reason}
        else:
            choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": gen.usage}

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, ChatRequest, chat=True)

    @router.post("/completions")
    async def completions(request: Request):
        return await answer(request, TextRequest, chat=False)

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str, request: Request):
        return _response(ApiError(404, f"There is no /v1/{rest} here: Chorus serves /v1/models, /v1/chat/completions "
                                       "and /v1/completions.", code="unknown_url"))

    return router


def create_app(runtime, keys: ApiKeys, adapters=None) -> FastAPI:
    """A FastAPI app with the `/v1` routes (the page, when served too, is mounted on it);
    with `adapters`, also the runtime adapter endpoints (api/adapter_routes.py)."""
    app = FastAPI(title="Chorus", docs_url=None, redoc_url=None, openapi_url=None)
    if adapters is not None:  # before the /v1 catch-all, which would answer their paths with 404
        from api.adapter_routes import create_adapter_router

        app.include_router(create_adapter_router(runtime, keys, adapters))
    app.include_router(create_router(runtime, keys, adapters))
    return app


# streaming --------------------------------------------------------------------


async def _watch(request: Request, stop: threading.Event) -> None:
    """Set `stop` when the client goes away (the reply would be written to no one)."""
    while not stop.is_set():
        if await request.is_disconnected():
            stop.set()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _pieces(gen, stop: threading.Event, request: Request):
    """The reply's text pieces, each taken from the engine in a worker thread."""
    it = iter(gen)
    watcher = asyncio.ensure_future(_watch(request, stop))
    try:
        while True:
            piece = await anyio.to_thread.run_sync(next, it, _END)
            if piece is _END:
                return
            yield piece
    finally:
        stop.set()
        watcher.cancel()
        with anyio.CancelScope(shield=True):  # also when cancelled: the row must leave the engine
            await anyio.to_thread.run_sync(it.close)


async def _drain(gen, stop: threading.Event, request: Request) -> None:
    """Run the whole reply in one worker thread (a reply that is not streamed): one hand-off
    instead of one per token, which with 8 clients cost 0.8 s of a 7 s batch."""
    watcher = asyncio.ensure_future(_watch(request, stop))
    try:
        await anyio.to_thread.run_sync(_consume, gen)  # not abandoned when cancelled: `stop` ends the row
    finally:
        stop.set()
        watcher.cancel()


def _consume(gen) -> None:
    it = iter(gen)
    try:
        for _ in it:
            pass
    finally:
        it.close()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(gen, stop, request, meta, include_usage, object_name, choice):
    head = {**meta, "object": object_name}
    first = choice(None, None, first=True)
    if first is not None:  # chat streams open with the assistant's role
        yield _sse({**head, "choices": [first]})
    try:
        async with contextlib.aclosing(_pieces(gen, stop, request)) as pieces:
            async for piece in pieces:
                yield _sse({**head, "choices": [choice(piece, None)]})
    except ChorusError as exc:  # the headers are sent: the error is an event, as OpenAI sends it
        yield _sse(error_body(str(exc), "server_error"))
        yield "data: [DONE]\n\n"
        return
    yield _sse({**head, "choices": [choice(None, gen.finish_reason)]})
    if include_usage:
        yield _sse({**head, "choices": [], "usage": gen.usage})
    yield "data: [DONE]\n\n"


def _chat_events(gen, stop, request, meta, include_usage):
    def choice(piece, finish, first=False):
        delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece is not None else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    return _stream(gen, stop, request, meta, include_usage, "chat.completion.chunk", choice)


def _text_events(gen, stop, request, meta, include_usage):
    def choice(piece, finish, first=False):
        return None if first else {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}

    return _stream(gen, stop, request, meta, include_usage, "text_completion", choice)
