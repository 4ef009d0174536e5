"""Turning chat examples into token ids and labels, exactly as the app will serve them.

An example `{"messages": [{"role": "user"|"assistant", "content"}...]}` is rendered with
the model's own chat template behind the persona card's system prompt (the same
`system_prompt(persona)` the chat service uses), so the adapter learns in the format it
is served in: rendering goes through core.chat_template, as the chat prompt's does (the
card at the head of the first user turn where the template has no system role, merged
turns where it demands alternation, thinking off where it has the switch), so the tokens
before each reply are the prompt the chat service would send for the same turns. Labels
are -100 everywhere except the assistant turns' content and their end-of-turn token: the
loss is on the chosen speaker's words only. An example too long
for `max_len` loses whole turns, oldest first (as the chat prompt does), down to the last
reply alone; the system prompt and the template's header are never cut, and neither is
the start of the last reply: a reply too long on its own loses its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.chat_template import render as _render

IGNORE = -100


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of each assistant turn (content + end token),
    in order; None for a turn whose text could not be found.

    A span is what the full rendering adds after the prompt that asks for that reply,
    without trailing whitespace; templates that are not prefix-stable fall back to
    finding the content itself.
    """
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    search_from = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if text.startswith(upto) and upto.startswith(prompt) and len(upto) > len(prompt):
            start, end = len(prompt), len(upto.rstrip())
        else:
            start = text.find(msg["content"], search_from)
            if start < 0:
                spans.append(None)
                continue
            end = start + len(msg["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        search_from = end
    return text, spans


def encode(tokenizer, system: str, messages: list[dict]) -> dict:
    """Token ids and labels of one example, untruncated. A reply marked `"seen": True` (a
    held-out reply that also appears in training, core.chatimport.examples) is context only."""
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = [{"role": "system", "content": system}, *clean] if system else clean
    text, spans = assistant_spans(tokenizer, full)
    labelled = [not m.get("seen") for m in messages if m["role"] == "assistant"]
    spans = [span for span, keep in zip(spans, labelled) if span is not None and keep]
    ids, offsets = _tokenize(tokenizer, text, spans[-1][0] if spans else len(text))
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[k] = ids[k]
    return {"input_ids": ids, "labels": labels}


def _tokenize(tokenizer, text: str, cut: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of `text`, the part before `cut` (the last reply's start)
    tokenized on its own: that is how the chat service tokenizes the prompt it asks that
    reply with, and a whitespace run at the seam ("</think>\n\n" + reply) can tokenize
    differently when the reply's first word follows it."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for a, b in ((0, cut), (cut, len(text))):
        if b > a:
            enc = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True)
            ids += enc["input_ids"]
            offsets += [(x + a, y + a) for x, y in enc["offset_mapping"]]
    return ids, offsets


def encode_fitting(tokenizer, system: str, messages: list[dict], max_len: int) -> dict | None:
    """`encode`, dropping whole turns, oldest first, until it fits in `max_len`. If the last
    reply alone (behind the system prompt) is still too long, its end is cut: the head of
    the prompt and the start of the reply stay. None if no reply token fits at all (the
    system prompt alone fills `max_len`)."""
    return _fitting(tokenizer, system, messages, max_len)[0]


def _fitting(tokenizer, system: str, messages: list[dict], max_len: int) -> tuple[dict | None, bool]:
    """(`encode_fitting`'s item, whether the last reply lost its end)."""
    msgs = list(messages)
    item = encode(tokenizer, system, msgs)
    while len(item["input_ids"]) > max_len and len(msgs) > 1:
        msgs = msgs[1:]  # a whole turn, never part of one
        item = encode(tokenizer, system, msgs)
    cut = len(item["input_ids"]) > max_len
    if cut:
        item = {k: v[:max_len] for k, v in item.items()}  # the reply's tail goes, the head stays
    if all(x == IGNORE for x in item["labels"]):
        return None, cut
    return item, cut


@dataclass
class Encoded:
    """Tokenized examples and what happened to them."""

    items: list[dict]
    truncated: int  # examples that lost turns or tokens to fit max_len
    dropped: int  # examples with no assistant token left
    label_tokens: int  # tokens the loss is computed on
    reply_cut: int = 0  # of the truncated, those whose last reply alone was too long and lost its end


def encode_all(tokenizer, system: str, examples: list[dict], max_len: int) -> Encoded:
    items, truncated, dropped, cut, labelled = [], 0, 0, 0, 0
    for ex in examples:
        full = encode(tokenizer, system, ex["messages"])
        if len(full["input_ids"]) <= max_len:
            item = full
        else:
            truncated += 1
            item, lost_end = _fitting(tokenizer, system, ex["messages"], max_len)
            cut += bool(item and lost_end)
        if item is None or all(x == IGNORE for x in item["labels"]):
            dropped += 1
            continue
        labelled += sum(x != IGNORE for x in item["labels"])
        items.append(item)
    return Encoded(items, truncated, dropped, labelled, reply_cut=cut)


def lengths(tokenizer, system: str, examples: list[dict]) -> list[int]:
    """Untruncated token lengths (for choosing max_seq_len)."""
    return [len(encode(tokenizer, system, ex["messages"])["input_ids"]) for ex in examples]


class ListDataset:
    """A map-style dataset over encoded items (what Trainer's DataLoader needs)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class Collator:
    """Right-pads a batch to its longest example; padding is masked out of attention and loss."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
