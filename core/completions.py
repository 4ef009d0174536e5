"""Answering OpenAI-style requests with a persona: the service behind the `/v1` API.

No HTTP here (api/ is the face). A request's `model` names a persona (its id, else its
exact name, else its name in any case) or the bare base model (no card, no adapter).
Chat requests are rendered the way the page renders a persona's prompt: the persona's card
is the system message, the client's own system messages are appended after the card (in
their order, wherever they stood), and the client's user/assistant turns follow, through
core.chat_template, so templates without a system role or with strict alternation still
take them; the oldest turns go first when the prompt does not fit. Text completions use the
prompt as given (tokenized as the tokenizer does by default, no template, no card) with the
persona's adapter.

Replies stream from `engine.stream`, with reasoning blocks filtered out of chat replies
(core.thinking) and the client's stop sequences cut here (also when the engine ends at
them itself). An API call writes nothing unless it names a conversation: then the last
user message and the reply are appended to it, with the persona that wrote the reply.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from core.chat_template import encode_text, render
from core.engine import AdapterRef, GenerationSettings
from core.errors import AdapterCorrupt, AdapterIncompatible, ChorusError, NotFound
from core.prompting import system_prompt
from core.thinking import ThinkFilter, prompt_opens_thinking


class ModelNotFound(NotFound):
    """The request's `model` is neither a persona nor the base model."""


class RequestInvalid(ChorusError):
    """A request that cannot be answered as asked; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


CHAT_ROLES = ("system", "developer", "user", "assistant")


@dataclass
class Prepared:
    """A request ready for the engine."""

    model: str  # what the answer reports as its model: the persona id, or the base model's name
    persona: dict | None
    input_ids: list[int]
    adapter: AdapterRef | None
    chat: bool  # chat (reasoning blocks filtered) or text completion (the text as written)
    opens_thinking: bool = False
    dropped_turns: int = 0
    warning: str | None = None  # the adapter could not be used: the card answers
    last_user: str | None = None  # what is appended to a conversation, when one is named


class StopScanner:
    """Cuts a streamed text before the first of some stop sequences. Text that could be the
    start of one is held back until it is known not to be."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text = self.held + piece
        self.held = ""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            return text[: min(found)]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def finish(self) -> str:
        held, self.held = ("" if self.hit else self.held), ""
        return held


class Completions:
    """OpenAI-style answers from the running chat service's engine and store."""

    def __init__(self, chat, served=None):
        self.chat = chat  # core.chat.ChatService: the adapter rules live there
        self.served = served  # core.served_adapters.ServedAdapters when `serve` takes adapters by name, else None
        self.store = chat.store
        self.engine = chat.engine

    @property
    def base_name(self) -> str:
        return self.engine.info.name

    def models(self) -> list[dict]:
        """Every persona (id, name), then the bare base model."""
        rows = [{"id": p["id"], "name": p["name"], "persona": True} for p in self.store.personas.list()]
        rows += [{"id": name, "name": name, "persona": False, "adapter": True} for name in (self.served.names() if self.served else [])]
        return rows + [{"id": self.base_name, "name": self.base_name, "persona": False}]

    def resolve(self, model: str) -> dict | None:
        """The persona `model` names (id, exact name, then name in any case); None for the base model."""
        key = (model or "").strip()
        personas = self.store.personas.list()
        for match in (lambda p: p["id"] == key, lambda p: p["name"] == key, lambda p: p["name"].lower() == key.lower()):
            found = [p for p in personas if match(p)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                ids = ", ".join(p["id"] for p in found)
                raise RequestInvalid(f"Several personas are called '{key}'; use one of their ids: {ids}.", "model", "model_ambiguous")
        if key.lower() == self.base_name.lower():
            return None
        names = ", ".join(p["id"] for p in personas) or "none yet"
        raise ModelNotFound(f"The model '{key}' does not exist: name a persona (id or name: {names}) "
                            f"or the base model '{self.base_name}'. GET /v1/models lists them.")

    # preparing ------------------------------------------------------------------

    def _target(self, model: str) -> tuple[dict | None, AdapterRef | None]:
        """(persona, None) or (None, the adapter served by that name) or (None, None) for the base."""
        try:
            return self.resolve(model), None
        except ModelNotFound:
            ref = self.served.lookup((model or "").strip(), self.engine) if self.served is not None else None
            if ref is None:
                raise
            return None, ref

    def _reported(self, model: str, persona: dict | None, served: AdapterRef | None) -> str:
        if served is not None:
            return (model or "").strip()
        return persona["id"] if persona else self.base_name

    def _adapter(self, persona: dict | None, served: AdapterRef | None = None) -> tuple[AdapterRef | None, str | None]:
        """The persona's adapter and a warning when it cannot be used (same rules as the chat);
        an adapter asked for by name must load, or the request is refused."""
        if served is not None:
            try:
                self.engine.ensure_adapter(served)
            except (AdapterCorrupt, AdapterIncompatible) as exc:
                raise RequestInvalid(f"The adapter '{served.persona_id}' cannot be used: {exc}".replace("served:", ""), "model") from None
            return served, None
        if persona is None:
            return None, None
        adapter = self.chat.adapter_ref(persona)
        other = self.chat.other_base(persona)
        if other:
            return None, f"{persona['name']}'s adapter was trained on {other}; this reply comes from its card."
        if adapter is not None:
            try:
                self.engine.ensure_adapter(adapter)
            except (AdapterCorrupt, AdapterIncompatible) as exc:
                return None, f"{persona['name']}'s adapter could not be used, so this reply comes from the card alone: {exc}"
        return adapter, None

    def prepare_chat(self, model: str, messages: list[dict], max_new_tokens: int) -> Prepared:
        """`messages`: [{"role", "content" (text)}], roles in CHAT_ROLES."""
        persona, served = self._target(model)
        for n, m in enumerate(messages):
            if m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
                raise RequestInvalid(f"messages[{n}] needs a role ({', '.join(CHAT_ROLES)}) and text content.", f"messages[{n}]")
        if not messages:
            raise RequestInvalid("messages is empty: send at least one message.", "messages")
        system = [system_prompt(persona)] if persona else []
        system += [m["content"].strip() for m in messages if m["role"] in ("system", "developer") and m["content"].strip()]
        turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] in ("user", "assistant")]
        head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
        tokenizer = self.engine.tokenizer
        budget = self.engine.prompt_budget(max_new_tokens)
        dropped = 0
        while True:
            ids = encode_text(tokenizer, render(tokenizer, head + turns, generation_prompt=True))
            if len(ids) <= budget or len(turns) <= 1:
                break
            turns, dropped = turns[1:], dropped + 1  # the oldest turn goes first, as on the page
        if len(ids) > budget:
            raise RequestInvalid(
                f"The prompt is {len(ids)} tokens and the reply may take {max_new_tokens}; this model reads at most "
                f"{self.engine.context_limit} tokens. Send less text or ask for fewer tokens.", "messages", "context_length_exceeded")
        adapter, warning = self._adapter(persona, served)
        users = [m["content"] for m in messages if m["role"] == "user"]
        last_user = messages[-1]["content"] if messages[-1]["role"] == "user" else None
        return Prepared(
            model=self._reported(model, persona, served), persona=persona, input_ids=ids, adapter=adapter, chat=True,
            opens_thinking=prompt_opens_thinking(tokenizer.decode(ids[-16:])), dropped_turns=dropped, warning=warning,
            last_user=last_user if users else None,
        )

    def prepare_text(self, model: str, prompt: str | list[int], max_new_tokens: int) -> Prepared:
        """A text completion: `prompt` as given (text, or token ids as they are), the
        persona's adapter, no card. Token ids are how another Chorus sends a prompt it
        rendered itself (core/engine/remote.py), so nothing is tokenized twice."""
        persona, served = self._target(model)
        if not prompt:
            raise RequestInvalid("prompt is empty: send the text to continue.", "prompt")
        if isinstance(prompt, list):
            size = len(self.engine.tokenizer)
            if any(not isinstance(t, int) or not 0 <= t < size for t in prompt):
                raise RequestInvalid(f"prompt: token ids must be integers from 0 to {size - 1}.", "prompt")
            ids = list(prompt)
        else:
            ids = list(self.engine.tokenizer(prompt)["input_ids"])
        budget = self.engine.prompt_budget(max_new_tokens)
        if len(ids) > budget:
            raise RequestInvalid(
                f"The prompt is {len(ids)} tokens and the reply may take {max_new_tokens}; this model reads at most "
                f"{self.engine.context_limit} tokens. Send less text or ask for fewer tokens.", "prompt", "context_length_exceeded")
        adapter, warning = self._adapter(persona, served)
        return Prepared(model=self._reported(model, persona, served), persona=persona, input_ids=ids,
                        adapter=adapter, chat=False, warning=warning, last_user=prompt if isinstance(prompt, str) else None)

    def check_conversation(self, conversation_id: str, prepared: Prepared) -> None:
        """Raise unless the reply to `prepared` can be appended to the conversation."""
        self.store.conversations.get(conversation_id)  # NotFound: a clear message
        if prepared.persona is None:
            raise RequestInvalid("Conversations are kept with a persona; name a persona as the model to append to one.",
                                 "chorus_conversation")
        if not prepared.chat or prepared.last_user is None or not prepared.last_user.strip():
            raise RequestInvalid("Appending to a conversation needs a chat request whose last message is the user's.",
                                 "chorus_conversation")

    def generate(self, prepared: Prepared, settings: GenerationSettings, stop: threading.Event | None = None,
                 conversation_id: str | None = None) -> "Generation":
        if conversation_id:
            self.check_conversation(conversation_id, prepared)
        return Generation(self, prepared, settings, stop or threading.Event(), conversation_id)


class Generation:
    """One reply: iterate it for the text as it comes; afterwards `text`, `finish_reason`
    ("stop" or "length", as OpenAI reports them) and `usage` are set. Closing it early (a
    client that went away) stops the engine's row; what was written is still appended to
    the named conversation."""

    def __init__(self, service: Completions, prepared: Prepared, settings: GenerationSettings, stop: threading.Event,
                 conversation_id: str | None):
        self.service, self.prepared, self.settings, self.stop = service, prepared, settings, stop
        self.conversation_id = conversation_id
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.figures: dict = {}
        self._parent = None
        if conversation_id:  # the user's message first, as the page does: it is kept even if the reply fails
            store = service.store.conversations
            path = store.path(conversation_id)
            row = store.add_message(conversation_id, "user", prepared.last_user.strip(), parent_id=path[-1]["id"] if path else None)
            self._parent = row["id"]

    def __iter__(self):
        p, engine = self.prepared, self.service.engine
        thoughts = ThinkFilter(inside=p.opens_thinking) if p.chat else None
        stops = StopScanner(self.settings.stop)
        pieces: list[str] = []
        stream = engine.stream(p.input_ids, p.adapter, self.settings, self.stop, result=self.figures)
        error = None
        try:
            for piece in stream:
                shown = stops.feed(thoughts.feed(piece) if thoughts else piece)
                if shown:
                    pieces.append(shown)
                    yield shown
                if stops.hit:
                    self.stop.set()
                    break
            else:
                tail = stops.feed(thoughts.finish()) if thoughts else ""
                tail += stops.finish()
                if tail:
                    pieces.append(tail)
                    yield tail
        except ChorusError as exc:
            error = exc
            raise
        finally:
            self.stop.set()
            stream.close()  # waits for the engine's row to end, which fills the figures
            self.text = "".join(pieces)
            self._finish(stops.hit)
            if self.conversation_id and (error is None or self.text.strip()):
                self._save(error)

    def _finish(self, hit_stop: bool) -> None:
        f = self.figures
        tokens = f.get("tokens")
        if tokens is None:
            tokens = len(self.service.engine.tokenizer(self.text, add_special_tokens=False)["input_ids"])
        reason = f.get("finish_reason")
        if hit_stop or reason == "stopped" or (reason is None and f.get("stopped")):
            reason = "stop"  # a stop sequence, or the request was stopped (a client that left)
        elif reason is None:
            reason = "length" if tokens >= self.settings.max_new_tokens else "stop"
        prompt_tokens = int(f.get("prompt_tokens") or len(self.prepared.input_ids))
        self.finish_reason = reason
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": int(tokens), "total_tokens": prompt_tokens + int(tokens)}

    def _save(self, error) -> None:
        p = self.prepared
        meta = {"settings": self.settings.as_dict(), "source": "api", "finish_reason": self.finish_reason,
                "stopped": bool(self.figures.get("stopped", True)), "adapter_sha256": p.adapter.sha256 if p.adapter else None,
                "dropped_turns": p.dropped_turns}
        if p.warning:
            meta["warning"] = p.warning
        if error is not None:
            meta["error"] = str(error)
        self.service.store.conversations.add_message(
            self.conversation_id, "assistant", self.text.strip(), parent_id=self._parent,
            persona_id=p.persona["id"], persona_name=p.persona["name"], meta=meta)
