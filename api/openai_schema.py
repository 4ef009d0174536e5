"""The OpenAI request bodies Chorus takes, checked with pydantic, and OpenAI's error JSON.

Fields OpenAI defines that Chorus does not use (presence_penalty, logit_bias, user, ...)
are accepted and ignored, as clients send them by default; the ones that would change
the answer in a way Chorus cannot honour (n > 1, logprobs, tools, echo) are refused with a
400 that names the field. `top_k`, `repetition_penalty` and `min_tokens` are taken as
extensions (as vLLM and SillyTavern's custom sources send them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.engine import GenerationSettings

DEFAULT_MAX_TOKENS = 512  # when a client names no limit (OpenAI's own default is "until the context ends")


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequest(Exception):
    """A request body that does not validate: message and the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self, n: int) -> str:
        """The message's text: a string, or the text parts of a list (images are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"messages[{n}]: only text content is supported (got a '{part.get('type')}' part).",
                                 f"messages[{n}].content")
            out.append(part["text"])
        return "".join(out)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=100_000)  # 0 or -1 (vLLM's spelling): off
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    min_tokens: int | None = Field(default=None, ge=0, le=8192)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: Any = None
    chorus_conversation: str | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported: send one request per answer")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return v

    def limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def settings(self) -> GenerationSettings:
        """Chorus's settings; what the client leaves out keeps Chorus's defaults."""
        if self.logprobs:
            raise BadRequest("logprobs are not supported.", "logprobs")
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0 if self.top_k == -1 else self.top_k,
                 "repetition_penalty": self.repetition_penalty, "seed": self.seed}
        kwargs = {k: v for k, v in given.items() if v is not None}
        if kwargs.get("top_p") == 0:  # OpenAI allows 0: the most likely token only
            kwargs["top_p"] = 1e-9
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if self.min_tokens and self.min_tokens > self.limit():
            raise BadRequest(f"min_tokens ({self.min_tokens}) is above the reply's limit ({self.limit()}).", "min_tokens")
        return GenerationSettings(max_new_tokens=self.limit(), min_new_tokens=self.min_tokens or 0, stop=tuple(stops), **kwargs)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    tools: list | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tools are not supported")
        return v

    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def turns(self) -> list[dict]:
        return [{"role": m.role, "content": m.text(n)} for n, m in enumerate(self.messages)]


class TextRequest(_Sampling):
    prompt: str | list[str] | list[int]  # token ids: a prompt rendered by the client (another Chorus, core/engine/remote.py)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and all(isinstance(t, int) for t in v):
            return v
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a list of exactly one string)")
            v = v[0]
        if not v:
            raise ValueError("prompt is empty: send the text to continue")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    """The request as `model`, or BadRequest naming the first field at fault."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        param = ".".join(loc) or None
        # Messages read "temperature: Input should be less than or equal to 2".
        message = first.get("msg", "invalid value").removeprefix("Value error, ")
        if first.get("type") == "missing":
            message = "this field is required"
        raise BadRequest(f"{param}: {message}" if param else message, param) from None
