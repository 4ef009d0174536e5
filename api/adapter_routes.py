"""vLLM's runtime adapter endpoints, on `python app.py serve --allow-adapter-loading DIR`:
`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter
{"lora_name"}`, answered as vLLM answers them (plain text on success, 400 for a request
that cannot be met, 404 for an unknown name), so a Chorus desktop treats a Chorus server
as it treats vLLM. Without the option these paths do not exist (404), as on a vLLM started
without VLLM_ALLOW_RUNTIME_LORA_UPDATING. The rules are core/served_adapters.py's.
"""

from __future__ import annotations

import json

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from api.app import ApiError, _response
from core.errors import ChorusError, NotFound


def create_adapter_router(runtime, keys, adapters) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def engine():
        from core.runtime import ModelLoading

        try:
            return runtime.chat.engine
        except ModelLoading as exc:
            raise ApiError(503, str(exc), "server_error", code="model_loading") from None
        except ChorusError as exc:
            raise ApiError(503, str(exc), "server_error", code="model_unavailable") from None

    async def call(request: Request, work, needed: tuple[str, ...]):
        try:
            why = keys.check(request.headers.get("authorization"))
            if why:
                raise ApiError(401, why, code="invalid_api_key")
            try:
                data = json.loads(await request.body() or b"null")
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "The request body is not valid JSON.") from None
            if not isinstance(data, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            if any(not data.get(k) for k in needed):  # said before the model is asked for: clients probe with this
                raise ApiError(400, " and ".join(f"'{k}'" for k in needed) + " must be provided.")
            eng = engine()
            return PlainTextResponse(await anyio.to_thread.run_sync(work, data, eng))
        except ApiError as exc:
            return _response(exc)
        except NotFound as exc:
            return _response(ApiError(404, str(exc), code="not_found"))
        except ChorusError as exc:
            return _response(ApiError(400, str(exc), param="lora_path"))

    @router.post("/load_lora_adapter")
    async def load(request: Request):
        def work(data, eng):
            name = str(data.get("lora_name") or "")
            adapters.load(name, str(data.get("lora_path") or ""), eng)
            return f"Success: LoRA adapter '{name}' added successfully."

        return await call(request, work, ("lora_name", "lora_path"))

    @router.post("/unload_lora_adapter")
    async def unload(request: Request):
        def work(data, eng):
            name = str(data.get("lora_name") or "")
            adapters.unload(name, eng)
            return f"Success: LoRA adapter '{name}' removed successfully."

        return await call(request, work, ("lora_name",))

    return router
