"""Talking to an OpenAI-compatible engine server (vLLM, or another Chorus's `serve`) over
HTTP: JSON requests, the server-sent events of a streamed completion, and errors turned
into one sentence for the user. The API key goes in the Authorization header only; no
message here repeats it.
"""

from __future__ import annotations

import json
import threading
from typing import Iterator
from urllib.parse import urlsplit

import httpx

from core.errors import ChorusError


class EngineUnreachable(ChorusError):
    """The engine server does not answer (down, wrong address, or it went away mid-reply)."""


class EngineRefused(ChorusError):
    """The engine server answered with an error; `status` is its HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def normalize_url(url: str) -> str:
    """`http://host:8000`, `.../v1` and `.../v1/` all mean the server's /v1."""
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChorusError(f"--engine takes the engine server's URL, like http://gpu-box:8000/v1; '{url}' is not one.")
    return url if url.endswith("/v1") else url + "/v1"


def _message(response: httpx.Response) -> str:
    """The error text of an OpenAI-style, vLLM-style or FastAPI-style error body."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)[:300]


class ServerClient:
    def __init__(self, url: str, api_key: str | None = None, *, connect_s: float = 5.0, read_s: float = 300.0):
        self.url = normalize_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(read_s, connect=connect_s))
        self.at_start = True  # connect() checks the server; a request that fails then says so differently

    def close(self) -> None:
        self.http.close()

    def unreachable(self, exc: Exception, mid_reply: bool = False, at_start: bool = False) -> EngineUnreachable:
        why = type(exc).__name__
        if at_start:
            return EngineUnreachable(f"No engine server answers at {self.url} ({why}). Start it (docs/scale-out.md), "
                                     "or check the address given to --engine.")
        if mid_reply:
            return EngineUnreachable(f"The engine server at {self.url} is unreachable: it went away mid-reply ({why}). "
                                     "What it wrote is kept; send again to retry.")
        return EngineUnreachable(f"The engine server at {self.url} is unreachable ({why}). Start it or check --engine; "
                                 "your next message tries again.")

    def refused(self, response: httpx.Response) -> EngineRefused:
        if response.status_code in (401, 403):
            return EngineRefused(f"The engine server at {self.url} refused the API key (HTTP {response.status_code}); "
                                 "give the key it expects with --engine-api-key.", response.status_code)
        return EngineRefused(f"The engine server at {self.url} answered HTTP {response.status_code}: {_message(response)}",
                             response.status_code)

    def request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """The response, whatever its status; only a server that does not answer raises."""
        try:
            return self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc, at_start=self.at_start) from None

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self.request(method, path, body)
        if response.status_code != 200:
            raise self.refused(response)
        try:
            return response.json()
        except ValueError:
            raise EngineRefused(f"The engine server at {self.url} answered {path} with something that is not JSON; "
                                "is --engine an OpenAI-compatible server?", 200) from None

    def stream(self, body: dict, stop: threading.Event) -> Iterator[dict]:
        """The chunks of a streamed /completions request. Setting `stop` (or closing the
        iterator) closes the connection, which is how both servers learn that the reply
        is no longer wanted."""
        answered = False
        try:
            with self.http.stream("POST", "/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self.refused(response)
                answered = True
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(chunk, dict) and chunk.get("error") and not chunk.get("choices"):
                        err = chunk["error"]
                        raise EngineRefused(f"The engine server at {self.url} failed mid-reply: "
                                            f"{err.get('message') if isinstance(err, dict) else err}", 500)
                    yield chunk
        except httpx.HTTPError as exc:
            raise self.unreachable(exc, mid_reply=answered) from None
