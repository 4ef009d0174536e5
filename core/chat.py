"""The chat service: conversations with personas, on top of the engine and the store.

A handler (web UI or command line) calls one method here; this module renders the
persona's prompt from the shown branch, asks the engine for a streamed reply with the
persona's adapter, and saves what was written, with the persona that wrote it. A
reasoning model's <think> blocks are filtered out of the stream as it comes
(core.thinking): never shown as the persona's words nor saved as its reply, kept in the
message's meta under "thinking".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from core.engine import AdapterRef, EngineBackend, GenerationSettings
from core.errors import AdapterCorrupt, AdapterIncompatible, ChorusError, NotFound
from core.loader import model_name_matches
from core.prompting import build_prompt, fill_placeholders
from core.thinking import ThinkFilter
from storage.store import Store


@dataclass
class ReplyEvent:
    kind: str  # "delta" (more text), "warning" (shown to the user), "done" (saved)
    text: str = ""
    message: dict | None = None
    info: dict = field(default_factory=dict)


@dataclass
class ReplyOutcome:
    """What one generated reply came to: its text, the engine's figures, the error that ended it."""
    text: str = ""
    figures: dict = field(default_factory=dict)
    error: ChorusError | None = None
    thoughts: ThinkFilter = field(default_factory=ThinkFilter)


class ChatService:
    def __init__(self, store: Store, engine: EngineBackend):
        self.store = store
        self.engine = engine

    # personas and adapters -------------------------------------------------

    def adapter_ref(self, persona: dict) -> AdapterRef | None:
        row = self.store.current_adapter(persona)
        if row is None:
            return None
        return AdapterRef(persona["id"], self.store.adapters.folder(row), row["sha256"])

    def other_base(self, persona: dict) -> str | None:
        """The base model the persona's adapter was trained on, when it is not the running
        one (by its recorded fingerprint, else its name); None when it fits or there is none."""
        row = self.store.current_adapter(persona)
        if row is None:
            return None
        info = self.engine.info
        recorded = row.get("base_fingerprint") or ""
        if (recorded and recorded != info.fingerprint) or not model_name_matches(row.get("base_model"), info.name):
            return row.get("base_model") or f"another base model (fingerprint {recorded})"
        return None

    def attach_adapter(self, persona_id: str, folder: Path) -> dict:
        """Check an adapter folder against the running model, store it as the persona's
        next version and load it; on any failure nothing already saved changes."""
        persona = self.store.personas.get(persona_id)
        spec = self.engine.check_adapter(folder)
        meta = spec.store_meta()
        meta["base_model"] = meta["base_model"] or self.engine.info.name
        meta["base_fingerprint"] = self.engine.info.fingerprint
        previous = persona.get("adapter_id")
        row = self.store.adapters.add_version(persona_id, folder, meta)
        try:
            self.engine.ensure_adapter(AdapterRef(persona_id, self.store.adapters.folder(row), row["sha256"]))
        except Exception:
            # Some faults show only when the weights are copied in (a missing matrix):
            # drop the new version again, so the versions list is as it was.
            self.store.adapters.remove_version(row["id"], restore=previous)
            raise
        return row

    def detach_adapter(self, persona_id: str) -> None:
        self.store.personas.set_adapter(persona_id, None)
        self.engine.forget(persona_id)

    def delete_persona(self, persona_id: str) -> dict:
        row = self.store.delete_persona(persona_id)
        self.engine.forget(persona_id)
        return row

    # conversations ----------------------------------------------------------

    def start_conversation(self, persona_id: str | None = None, title: str = "") -> dict:
        """A new conversation; with a persona, its greeting is the first message."""
        conv = self.store.conversations.create(title)
        if persona_id:
            persona = self.store.personas.get(persona_id)
            greeting = (persona.get("greeting") or "").strip()
            if greeting:
                self.store.conversations.add_message(
                    conv["id"],
                    "assistant",
                    fill_placeholders(greeting, persona["name"]),
                    parent_id=None,
                    persona_id=persona["id"],
                    persona_name=persona["name"],
                    meta={"greeting": True},
                )
        return self.store.conversations.get(conv["id"])

    def send(
        self,
        conversation_id: str,
        persona_id: str,
        text: str,
        settings: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        """Add the user's message to the shown branch and stream the persona's reply."""
        text = text.strip()
        if not text:
            raise ChorusError("The message is empty; type something first.")
        self.store.personas.get(persona_id)  # a deleted persona: NotFound before anything is saved
        path = self.store.conversations.path(conversation_id)
        parent = path[-1]["id"] if path else None
        self.store.conversations.add_message(conversation_id, "user", text, parent_id=parent)
        return self._reply(conversation_id, persona_id, settings or GenerationSettings(), stop)

    def regenerate(
        self,
        conversation_id: str,
        persona_id: str,
        settings: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        """A new reply to the last user message, kept beside the old one as a sibling."""
        path = self.store.conversations.path(conversation_id)
        if not path:
            raise ChorusError("There is nothing to regenerate yet.")
        if path[-1]["role"] == "assistant":
            if path[-1]["meta"].get("greeting"):
                raise ChorusError("The greeting cannot be regenerated; send a message first.")
            if path[-1]["parent_id"] is None:
                raise ChorusError("There is nothing to regenerate yet.")
            path = path[:-1]  # the new reply answers the same message, beside the old one
        return self._reply(conversation_id, persona_id, settings or GenerationSettings(), stop, path)

    def _reply(self, conversation_id, persona_id, settings, stop, path=None) -> Iterator[ReplyEvent]:
        persona = self.store.personas.get(persona_id)
        if path is None:
            path = self.store.conversations.path(conversation_id)
        parent = path[-1]["id"] if path else None
        prompt, adapter, warning = self.prepare(persona, path, settings)
        return self._stream(conversation_id, persona, parent, prompt, adapter, settings, stop or threading.Event(), warning)

    def prepare(self, persona: dict, path: list[dict], settings: GenerationSettings):
        """The prompt `persona` answers `path` with, its adapter (None: the card alone) and the
        warning to show when the adapter cannot be used."""
        prompt = build_prompt(self.engine.tokenizer, persona, path, self.engine.prompt_budget(settings.max_new_tokens))
        adapter = self.adapter_ref(persona)
        warning = None
        other = self.other_base(persona)
        if other:
            # Trained on a base that is not the one running: the card answers, and the
            # adapter stays attached for when that base is back (nothing is detached).
            warning = f"{persona['name']}'s adapter was trained on {other}; answering from its card until {other} is back."
            adapter = None
        if adapter is not None:
            try:
                self.engine.ensure_adapter(adapter)
            except (AdapterCorrupt, AdapterIncompatible) as exc:
                self._check_not_deleted(persona)
                warning = f"{persona['name']}'s adapter could not be used, so this reply comes from the card alone: {exc}"
                adapter = None
        return prompt, adapter, warning

    def _stream(self, conversation_id, persona, parent, prompt, adapter, settings, stop, warning):
        outcome = ReplyOutcome()
        try:
            yield from self.generate(prompt, adapter, settings, stop, warning, outcome)
        finally:
            # Saved even when the consumer stops early: what was written is kept.
            message = self.save_outcome(conversation_id, persona, parent, outcome, settings, adapter, prompt, warning)
        if outcome.error is not None:
            self._check_not_deleted(persona)
            raise outcome.error
        yield ReplyEvent("done", outcome.text, message=message)

    def generate(self, prompt, adapter, settings, stop, warning, outcome: "ReplyOutcome") -> Iterator[ReplyEvent]:
        """Stream one reply's events without saving it; `outcome` holds what was written (also
        after an early stop) and the error that ended it, if any, once this generator ends."""
        if warning:
            yield ReplyEvent("warning", warning)
        if prompt.dropped_turns:
            yield ReplyEvent("info", info={"dropped_turns": prompt.dropped_turns})
        pieces: list[str] = []
        thoughts = outcome.thoughts = ThinkFilter(inside=prompt.opens_thinking)
        try:
            for piece in self.engine.stream(prompt.input_ids, adapter, settings, stop, result=outcome.figures):
                shown = thoughts.feed(piece)
                if shown:
                    pieces.append(shown)
                    yield ReplyEvent("delta", shown)
            # Text held back as a possible tag that never completed is the persona's words.
            shown = thoughts.finish()
            if shown:
                pieces.append(shown)
                yield ReplyEvent("delta", shown)
        except ChorusError as exc:
            outcome.error = exc
        finally:
            pieces.append(thoughts.finish())  # after an early stop: what was held back, if anything
            outcome.text = "".join(pieces).strip()

    def save_outcome(self, conversation_id, persona, parent, outcome, settings, adapter, prompt, warning) -> dict | None:
        """Save a generated reply under `parent`; a reply that failed before writing anything
        is not saved as an empty message (None)."""
        if outcome.error is not None and not outcome.text:
            return None
        return self._save_reply(conversation_id, persona, parent, outcome.text, settings, outcome.figures, adapter,
                                prompt, warning, outcome.error, outcome.thoughts)

    def _check_not_deleted(self, persona: dict) -> None:
        """Raise NotFound when `persona` was deleted while its reply was being prepared."""
        try:
            self.store.personas.get(persona["id"])
        except NotFound:
            raise NotFound(f"{persona['name']} was deleted while this reply was being prepared; nothing more was written.") from None

    def _save_reply(self, conversation_id, persona, parent, text, settings, figures, adapter, prompt, warning, error, thoughts):
        meta = {
            "settings": settings.as_dict(),
            # Not filled when the consumer left before the worker finished: that is a stop too.
            "stopped": bool(figures.get("stopped", True)),
            "adapter_sha256": adapter.sha256 if adapter else None,
            "dropped_turns": prompt.dropped_turns,
        }
        if thoughts.thinking:
            meta["thinking"] = thoughts.thinking
            if thoughts.unclosed:
                meta["thinking_unclosed"] = True  # the reply ended (or was stopped) mid-thought
        if warning:
            meta["warning"] = warning
        if error is not None:
            meta["error"] = str(error)
        return self.store.conversations.add_message(
            conversation_id,
            "assistant",
            text,
            parent_id=parent,
            persona_id=persona["id"],
            persona_name=persona["name"],
            meta=meta,
        )

    # added for the web UI -----------------------------------------------------

    def resend_edited(
        self,
        conversation_id: str,
        message_id: int,
        persona_id: str,
        text: str,
        settings: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        """Keep an edited copy of a user message beside the original (a new branch) and
        stream the persona's reply to it; the original branch stays browsable."""
        text = text.strip()
        if not text:
            raise ChorusError("The message is empty; type something first.")
        self.store.personas.get(persona_id)
        original = self.store.conversations.message(message_id)
        if original["conversation_id"] != conversation_id or original["role"] != "user":
            raise ChorusError("Only your own messages in this conversation can be edited and sent again.")
        self.store.conversations.add_message(conversation_id, "user", text, parent_id=original["parent_id"])
        return self._reply(conversation_id, persona_id, settings or GenerationSettings(), stop)
