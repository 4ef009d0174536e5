"""Conversations and their messages, kept as a tree.

A message's parent is the message it answers; a regenerated reply is a sibling of the
reply it replaces (same parent), so nothing written is ever lost. The conversation's
`leaf_id` marks the branch being shown: its path is the walk from the leaf to the root.

A group chat is a conversation with `members` (persona ids, in reply order) and a
`group_mode` ('turn', 'together' or 'mention'); a one-to-one chat has no members. A round
of group replies is a chain on one branch (each reply's parent is the reply before it), so
the next round's prompts see all of them (core.group_chat).
"""

from __future__ import annotations

import json
import uuid

from storage.db import DatabaseHandle, decode_json, now
from storage.errors import ChorusError, NotFound

MAX_MESSAGE = 256 * 1024
MAX_TITLE = 120
GROUP_MODES = ("turn", "together", "mention")
MAX_MEMBERS = 8


class MessageInvalid(ChorusError):
    """A message or title that cannot be saved as given."""


def _decode(row: dict) -> dict:
    return decode_json(row, {"meta": dict})


def _decode_conv(row: dict) -> dict:
    row = decode_json(row, {"members": list})
    row["members"] = [m for m in row["members"] if isinstance(m, str)]
    row["group_mode"] = row.get("group_mode") if row.get("group_mode") in GROUP_MODES else "turn"
    return row


def _check_group(members: list[str], mode: str) -> None:
    if mode not in GROUP_MODES:
        raise MessageInvalid(f"Unknown group mode '{mode}'; use one of: {', '.join(GROUP_MODES)}.")
    if len(set(members)) != len(members):
        raise MessageInvalid("A persona can be in a group only once.")
    if len(members) > MAX_MEMBERS:
        raise MessageInvalid(f"A group has at most {MAX_MEMBERS} personas; {len(members)} were picked.")


class ConversationRepo:
    def __init__(self, handle: DatabaseHandle):
        self._h = handle

    @property
    def _db(self):
        return self._h.db

    # conversations -------------------------------------------------------

    def create(self, title: str = "", members: list[str] | None = None, mode: str = "turn") -> dict:
        """A new conversation; with `members`, a group chat whose personas reply by `mode`."""
        members = list(members or [])
        _check_group(members, mode)
        cid = uuid.uuid4().hex[:12]
        stamp = now()
        with self._h.transaction():
            self._db["conversations"].insert({"id": cid, "title": title[:MAX_TITLE], "created": stamp, "updated": stamp,
                                              "members": json.dumps(members), "group_mode": mode})
        return self.get(cid)

    def get(self, conversation_id: str) -> dict:
        rows = list(self._db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise NotFound(f"There is no conversation '{conversation_id}'. It may have been deleted.")
        return _decode_conv(rows[0])

    def set_group(self, conversation_id: str, *, members: list[str] | None = None, mode: str | None = None) -> dict:
        """Change a group's members or reply mode (what is not given stays)."""
        conv = self.get(conversation_id)
        members = conv["members"] if members is None else list(members)
        mode = conv["group_mode"] if mode is None else mode
        _check_group(members, mode)
        with self._h.transaction():
            self._db["conversations"].update(conversation_id, {"members": json.dumps(members), "group_mode": mode})
        return self.get(conversation_id)

    def list(self, limit: int = 200) -> list[dict]:
        """Newest first, each with the names of the personas that spoke in it."""
        sql = """
            SELECT c.*, COUNT(m.id) AS message_count,
                   GROUP_CONCAT(DISTINCT m.persona_name) AS persona_names
            FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
            GROUP BY c.id ORDER BY c.updated DESC LIMIT ?
        """
        out = []
        for row in self._db.query(sql, [limit]):
            row = _decode_conv(dict(row))
            row["personas"] = [n for n in (row.pop("persona_names") or "").split(",") if n]
            out.append(row)
        return out

    def rename(self, conversation_id: str, title: str) -> dict:
        self.get(conversation_id)
        title = " ".join(title.split())
        if not title:
            raise MessageInvalid("A conversation title cannot be empty.")
        with self._h.transaction():
            self._db["conversations"].update(conversation_id, {"title": title[:MAX_TITLE]})
        return self.get(conversation_id)

    def delete(self, conversation_id: str) -> None:
        self.get(conversation_id)
        with self._h.transaction():
            self._db.execute("DELETE FROM messages WHERE conversation_id = ?", [conversation_id])
            self._db["conversations"].delete(conversation_id)

    # messages -------------------------------------------------------------

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        parent_id: int | None,
        persona_id: str | None = None,
        persona_name: str | None = None,
        meta: dict | None = None,
    ) -> dict:
        """Append a message under `parent_id` and make it the shown branch's leaf."""
        if role not in ("system", "user", "assistant"):
            raise MessageInvalid(f"Unknown message role '{role}'.")
        if len(content) > MAX_MESSAGE:
            raise MessageInvalid(f"The message is {len(content):,} characters long; the limit is {MAX_MESSAGE:,}.")
        conv = self.get(conversation_id)
        if parent_id is not None:
            parent = self.message(parent_id)
            if parent["conversation_id"] != conversation_id:
                raise MessageInvalid("A message can only answer a message of the same conversation.")
        stamp = now()
        with self._h.transaction():
            mid = (
                self._db["messages"]
                .insert(
                    {
                        "conversation_id": conversation_id,
                        "parent_id": parent_id,
                        "role": role,
                        "content": content,
                        "persona_id": persona_id,
                        "persona_name": persona_name,
                        "meta": json.dumps(meta or {}),
                        "created": stamp,
                    }
                )
                .last_pk
            )
            update = {"leaf_id": mid, "updated": stamp}
            if not conv["title"] and role == "user":
                update["title"] = " ".join(content.split())[:60]
            self._db["conversations"].update(conversation_id, update)
        return self.message(mid)

    def message(self, message_id: int) -> dict:
        rows = list(self._db["messages"].rows_where("id = ?", [message_id]))
        if not rows:
            raise NotFound(f"There is no message {message_id}; it may have been deleted.")
        return _decode(rows[0])

    def update_message(self, message_id: int, content: str | None = None, meta: dict | None = None) -> dict:
        row = self.message(message_id)
        update = {}
        if content is not None:
            if len(content) > MAX_MESSAGE:
                raise MessageInvalid(f"The message is {len(content):,} characters long; the limit is {MAX_MESSAGE:,}.")
            update["content"] = content
        if meta is not None:
            update["meta"] = json.dumps({**row["meta"], **meta})
        if update:
            with self._h.transaction():
                self._db["messages"].update(message_id, update)
                self._db["conversations"].update(row["conversation_id"], {"updated": now()})
        return self.message(message_id)

    def delete_message(self, message_id: int, *, keep_replies: bool = False) -> None:
        """Delete a message and every reply below it; the branch falls back to its parent.

        With `keep_replies`, only this message goes: what answered it moves up to its parent
        (a group member's reply deleted from the middle of a round leaves the others)."""
        row = self.message(message_id)
        cid = row["conversation_id"]
        if keep_replies:
            with self._h.transaction():
                conv = self.get(cid)
                self._db.execute("UPDATE messages SET parent_id = ? WHERE parent_id = ?", [row["parent_id"], message_id])
                self._db.execute("DELETE FROM messages WHERE id = ?", [message_id])
                if conv["leaf_id"] == message_id or conv["leaf_id"] is None:
                    leaf = self._latest_leaf_under(row["parent_id"], cid)
                    self._db["conversations"].update(cid, {"leaf_id": leaf, "updated": now()})
            return
        with self._h.transaction():
            doomed = [r[0] for r in self._db.execute(
                """WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL
                   SELECT m.id FROM messages m JOIN sub ON m.parent_id = sub.id) SELECT id FROM sub""",
                [message_id],
            ).fetchall()]
            conv = self.get(cid)
            self._db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(doomed))})", doomed)
            if conv["leaf_id"] in doomed or conv["leaf_id"] is None:
                leaf = self._latest_leaf_under(row["parent_id"], cid)
                self._db["conversations"].update(cid, {"leaf_id": leaf, "updated": now()})

    def children(self, conversation_id: str, parent_id: int | None) -> list[dict]:
        if parent_id is None:
            rows = self._db["messages"].rows_where("conversation_id = ? AND parent_id IS NULL", [conversation_id], order_by="id")
        else:
            rows = self._db["messages"].rows_where("parent_id = ?", [parent_id], order_by="id")
        return [_decode(r) for r in rows]

    def _latest_leaf_under(self, message_id: int | None, conversation_id: str) -> int | None:
        """Follow the newest child down from `message_id` (None: the root level)."""
        current = message_id
        while True:
            kids = self.children(conversation_id, current)
            if not kids:
                return current
            current = kids[-1]["id"]

    def select(self, message_id: int) -> None:
        """Show the branch through `message_id` (used to browse sibling replies)."""
        row = self.message(message_id)
        leaf = self._latest_leaf_under(message_id, row["conversation_id"])
        with self._h.transaction():
            self._db["conversations"].update(row["conversation_id"], {"leaf_id": leaf})

    def path(self, conversation_id: str) -> list[dict]:
        """The shown branch, root first; each message carries `sibling_index`/`sibling_count`."""
        conv = self.get(conversation_id)
        out = []
        current = conv["leaf_id"]
        while current is not None:
            row = self.message(current)
            sibs = [s["id"] for s in self.children(conversation_id, row["parent_id"])]
            row["sibling_index"] = sibs.index(row["id"])
            row["sibling_count"] = len(sibs)
            row["sibling_ids"] = sibs
            out.append(row)
            current = row["parent_id"]
        return out[::-1]

    def all_messages(self, conversation_id: str) -> list[dict]:
        return [_decode(r) for r in self._db["messages"].rows_where("conversation_id = ?", [conversation_id], order_by="id")]
