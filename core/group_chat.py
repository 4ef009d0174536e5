"""Group chats: several personas answering each of the user's messages.

A group is a conversation with members (2-8 persona ids, in reply order) and a mode:

- "turn" (the default): the members reply one after another; each reply is saved as it
  ends, so the next member's prompt already shows it ("Name: text", core.prompting).
- "together": every member answers the same prompt (the branch up to the user's message),
  each from its own thread calling `engine.stream`, so an engine that batches concurrent
  streams decodes them in one batch. The replies are then saved in member order.
- "mention": only the members addressed as `@Name` reply (case-insensitive; the longest
  member name that follows the @ wins, so names with spaces work; `@all` is everyone), in
  the order they were first mentioned. A message that mentions no member is refused before
  anything is saved, with what to do: the user chose that only those addressed answer, so
  answering with everyone, or no one, would both be surprises.

How the tree holds a round: the replies are a chain on one branch, whatever the mode (the
user's message, then member 1's reply, member 2's reply below it, ...). Siblings would hide
all but one reply of a round; a chain keeps every reply on the shown branch, so the next
round's prompts, the transcript and the exports see all of them. In "together" mode a reply
was written without seeing the ones above it, which the prompt of the *next* round does not
need to know. Regenerating a reply makes a sibling of it (a swipe, as in one-to-one chats);
for a reply in the middle of a round, the replies below the old version stay with it.

A member deleted from Chorus leaves the group quietly: its past messages keep its name and
it no longer replies; a group with nobody left says so. Each member has its own stop flag,
so stopping one reply leaves the others going.
"""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

from core.chat import ChatService, ReplyOutcome
from core.engine import GenerationSettings
from core.errors import ChorusError, NotFound
from storage.conversations import GROUP_MODES, MAX_MEMBERS

MIN_MEMBERS = 2
MODE_LABELS = {"turn": "in turn", "together": "everyone at once", "mention": "only @mentioned"}
JOIN_S = 30.0  # how long a left round waits for its reply threads to notice their stop flag


@dataclass
class GroupEvent:
    persona_id: str  # "" for a notice about the whole round
    name: str
    kind: str  # "queued" (will reply this round), "start", "delta", "warning", "info", "done" (saved), "error", "skipped" (stopped before it began)
    text: str = ""
    message: dict | None = None
    info: dict = field(default_factory=dict)


def _ends_word(rest: str, n: int) -> bool:
    return len(rest) == n or not (rest[n].isalnum() or rest[n] == "_")


def parse_mentions(text: str, members: list[dict]) -> tuple[list[dict], list[str]]:
    """The members `text` addresses with @Name, in the order first mentioned, and the
    @words that name no member. `@all` addresses every member, in member order."""
    by_length = sorted(members, key=lambda p: len(p["name"]), reverse=True)
    found: list[dict] = []
    unknown: list[str] = []
    for at in re.finditer(r"(?<![\w@])@", text):
        rest = text[at.end():]
        low = rest.lower()
        for persona in by_length:
            name = persona["name"].lower()
            if name and low.startswith(name) and _ends_word(rest, len(name)):
                if persona not in found:
                    found.append(persona)
                break
        else:
            if low.startswith("all") and _ends_word(rest, 3):
                found.extend(p for p in members if p not in found)
                continue
            word = re.match(r"[\w'-]+", rest)
            if word:
                unknown.append(word.group(0))
    return found, unknown


class GroupChatService:
    """Beside ChatService (whose prompt building and saving it reuses), for group chats."""

    def __init__(self, store, chat: ChatService | None = None):
        """`chat` (which needs the model) is only used to reply: a group can be started and
        its mode changed while the model loads."""
        self.store = store
        self.chat = chat

    def _chat(self) -> ChatService:
        if self.chat is None:
            raise ChorusError("The model is not loaded yet; the group can reply once it is.")
        return self.chat

    # the group --------------------------------------------------------------------

    def start_group(self, persona_ids: list[str], title: str = "", mode: str = "turn") -> dict:
        ids = list(dict.fromkeys(p for p in persona_ids if p))
        if not MIN_MEMBERS <= len(ids) <= MAX_MEMBERS:
            raise ChorusError(f"A group chat needs {MIN_MEMBERS} to {MAX_MEMBERS} personas; {len(ids)} picked. "
                              "Pick between 2 and 8 personas.")
        self._check_mode(mode)
        for pid in ids:
            self.store.personas.get(pid)  # a deleted persona: NotFound before anything is saved
        return self.store.conversations.create(title, members=ids, mode=mode)

    def set_mode(self, conversation_id: str, mode: str) -> dict:
        self._check_mode(mode)
        conv = self.store.conversations.get(conversation_id)
        if not conv["members"]:
            raise ChorusError("This is a one-to-one chat; reply modes belong to group chats.")
        return self.store.conversations.set_group(conversation_id, mode=mode)

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in GROUP_MODES:
            raise ChorusError(f"Unknown reply mode '{mode}'; use one of: {', '.join(GROUP_MODES)}.")

    def members(self, conv: dict) -> list[dict]:
        """The group's personas that still exist, in reply order."""
        out = []
        for pid in conv["members"]:
            try:
                out.append(self.store.personas.get(pid))
            except NotFound:
                pass  # deleted from Chorus: it has left the group; its messages keep its name
        return out

    def _group(self, conversation_id: str) -> tuple[dict, list[dict]]:
        conv = self.store.conversations.get(conversation_id)
        if not conv["members"]:
            raise ChorusError("This is a one-to-one chat, not a group chat.")
        members = self.members(conv)
        if not members:
            raise ChorusError("Every persona of this group has been deleted, so nobody is left to reply; "
                              "its messages stay readable. Start a new group chat to go on.")
        return conv, members

    def responders(self, members: list[dict], text: str, mode: str) -> tuple[list[dict], list[str]]:
        """Who replies to `text`, and notices for the user (unknown @names)."""
        if mode != "mention":
            return members, []
        found, unknown = parse_mentions(text, members)
        names = ", ".join("@" + p["name"] for p in members)
        if not found:
            what = f"names no member of this group (@{', @'.join(unknown)})" if unknown else "mentions nobody"
            raise ChorusError(f"Only @mentioned members reply in this group, and this message {what}. "
                              f"Address someone ({names}, or @all), or switch the reply mode.")
        notes = [f"No member of this group is called @{u}; members: {names}." for u in unknown]
        return found, notes

    # replying ----------------------------------------------------------------------

    def send(self, conversation_id: str, text: str, settings: GenerationSettings | None = None,
             stops: dict[str, threading.Event] | None = None) -> Iterator[GroupEvent]:
        """Add the user's message to the shown branch and stream the members' replies."""
        text = text.strip()
        if not text:
            raise ChorusError("The message is empty; type something first.")
        conv, members = self._group(conversation_id)
        who, notes = self.responders(members, text, conv["group_mode"])  # refused before anything is saved
        self._chat()
        path = self.store.conversations.path(conversation_id)
        user = self.store.conversations.add_message(conversation_id, "user", text, parent_id=path[-1]["id"] if path else None)
        return self._round(conversation_id, conv["group_mode"], who, path + [user], settings, stops, notes)

    def resend_edited(self, conversation_id: str, message_id: int, text: str, settings: GenerationSettings | None = None,
                      stops: dict[str, threading.Event] | None = None) -> Iterator[GroupEvent]:
        """Keep an edited copy of a user message beside the original and let the group answer it."""
        text = text.strip()
        if not text:
            raise ChorusError("The message is empty; type something first.")
        conv, members = self._group(conversation_id)
        original = self.store.conversations.message(message_id)
        if original["conversation_id"] != conversation_id or original["role"] != "user":
            raise ChorusError("Only your own messages in this conversation can be edited and sent again.")
        who, notes = self.responders(members, text, conv["group_mode"])
        self._chat()
        self.store.conversations.add_message(conversation_id, "user", text, parent_id=original["parent_id"])
        path = self.store.conversations.path(conversation_id)
        return self._round(conversation_id, conv["group_mode"], who, path, settings, stops, notes)

    def regenerate(self, conversation_id: str, message_id: int | None = None, settings: GenerationSettings | None = None,
                   stop: threading.Event | None = None) -> Iterator[GroupEvent]:
        """Another version of one member's reply (default: the last one shown), kept beside
        the old one as a sibling, from the same point of the conversation."""
        path = self.store.conversations.path(conversation_id)
        ids = [m["id"] for m in path]
        if message_id is None:
            message_id = ids[-1] if path and path[-1]["role"] == "assistant" else None
        if message_id not in ids:
            raise ChorusError("There is no reply to regenerate here; send a message first.")
        at = ids.index(message_id)
        msg = path[at]
        if msg["role"] != "assistant" or msg["meta"].get("greeting"):
            raise ChorusError("Only a persona's reply can be regenerated.")
        try:
            persona = self.store.personas.get(msg["persona_id"] or "")
        except NotFound:
            raise ChorusError(f"{msg.get('persona_name') or 'This persona'} has been deleted, so this reply "
                              "cannot be written again; it stays as it is.") from None
        settings = settings or GenerationSettings()
        self._chat()
        return self._one(conversation_id, persona, path[:at], replace(settings), stop or threading.Event())

    def _round(self, conversation_id, mode, who, path, settings, stops, notes) -> Iterator[GroupEvent]:
        settings = settings or GenerationSettings()
        stops = stops if stops is not None else {}
        for note in notes:
            yield GroupEvent("", "", "warning", note)
        for persona in who:
            yield GroupEvent(persona["id"], persona["name"], "queued")
        if mode == "together":
            yield from self._together(conversation_id, who, path, settings, stops)
            return
        for persona in who:
            stop = stops.setdefault(persona["id"], threading.Event())
            if stop.is_set():
                yield GroupEvent(persona["id"], persona["name"], "skipped")
                continue
            message = yield from self._one(conversation_id, persona, path, replace(settings), stop)
            if message is not None:
                path = path + [message]

    def _one(self, conversation_id, persona, path, settings, stop):
        """One member's reply to `path`, streamed and saved below its end; returns the message."""
        pid, name = persona["id"], persona["name"]
        yield GroupEvent(pid, name, "start")
        try:
            persona = self.store.personas.get(pid)  # deleted since the round began: it no longer replies
            prompt, adapter, warning = self.chat.prepare(persona, path, settings)
        except ChorusError as exc:
            yield GroupEvent(pid, name, "error", str(exc))
            return None
        outcome = ReplyOutcome()
        message = None
        try:
            for event in self.chat.generate(prompt, adapter, settings, stop, warning, outcome):
                yield GroupEvent(pid, name, event.kind, event.text, info=event.info)
        finally:
            # Saved even when the consumer leaves early: what was written is kept.
            message = self.chat.save_outcome(conversation_id, persona, path[-1]["id"] if path else None,
                                             outcome, settings, adapter, prompt, warning)
        if outcome.error is not None:
            yield GroupEvent(pid, name, "error", str(outcome.error), message=message)
        else:
            yield GroupEvent(pid, name, "done", outcome.text, message=message)
        return message

    def _together(self, conversation_id, who, path, settings, stops) -> Iterator[GroupEvent]:
        """Every member answers `path` at once; the replies are saved in member order, each
        as soon as it and the ones before it have ended."""
        jobs = []
        for persona in who:
            pid, name = persona["id"], persona["name"]
            stop = stops.setdefault(pid, threading.Event())
            if stop.is_set():
                yield GroupEvent(pid, name, "skipped")
                continue
            try:
                member_settings = replace(settings)
                prompt, adapter, warning = self.chat.prepare(persona, path, member_settings)
            except ChorusError as exc:
                yield GroupEvent(pid, name, "error", str(exc))
                continue
            jobs.append(dict(persona=persona, settings=member_settings, prompt=prompt, adapter=adapter,
                             warning=warning, stop=stop, outcome=ReplyOutcome(), ended=False, saved=False))
        events: queue.Queue = queue.Queue()

        def work(i, job):
            try:
                for event in self.chat.generate(job["prompt"], job["adapter"], job["settings"], job["stop"],
                                                 job["warning"], job["outcome"]):
                    events.put((i, event))
            except BaseException as exc:  # not a ChorusError (those are in the outcome): still a message
                job["outcome"].error = ChorusError(f"{job['persona']['name']}'s reply failed: {type(exc).__name__}: {exc}")
            finally:
                events.put((i, None))

        threads = [threading.Thread(target=work, args=(i, job), daemon=True, name=f"chorus-group-{job['persona']['id']}")
                   for i, job in enumerate(jobs)]
        parent = path[-1]["id"] if path else None

        def save(job):
            nonlocal parent
            job["saved"] = True
            p = job["persona"]
            message = self.chat.save_outcome(conversation_id, p, parent, job["outcome"], job["settings"],
                                             job["adapter"], job["prompt"], job["warning"])
            if message is not None:
                parent = message["id"]
            return message

        try:
            for job in jobs:
                yield GroupEvent(job["persona"]["id"], job["persona"]["name"], "start")
            for job, thread in zip(jobs, threads):
                job["began"] = True
                thread.start()
            done = 0
            while done < len(jobs):
                i, event = events.get()
                job = jobs[i]
                p = job["persona"]
                if event is not None:
                    yield GroupEvent(p["id"], p["name"], event.kind, event.text, info=event.info)
                    continue
                job["ended"] = True
                while done < len(jobs) and jobs[done]["ended"]:  # save in member order
                    nxt = jobs[done]
                    done += 1
                    message = save(nxt)
                    out = nxt["outcome"]
                    kind = "error" if out.error is not None else "done"
                    yield GroupEvent(nxt["persona"]["id"], nxt["persona"]["name"], kind,
                                     str(out.error) if out.error is not None else out.text, message=message)
        finally:
            # The consumer left (or something failed): stop what still runs, keep what was written.
            for job in jobs:
                if not job["ended"]:
                    job["stop"].set()
            for thread in threads:
                if thread.is_alive():
                    thread.join(JOIN_S)
            for job in jobs:
                if job.get("began") and not job["saved"]:
                    save(job)
