"""The batched forward loop: rows of different prompts and adapters decoded together.

A batch is left-padded: every row's prompt ends at the same column, padding is masked,
and each row counts its own positions (as `generate` does for a padded batch: the mask's
cumulative sum). Prompts run as one prefill; then each step feeds every row its last
token. A row that ends leaves by selecting the other rows of the key/value cache; rows
that arrive later are prefilled on their own and joined at a step boundary by padding
both caches on the left to one length (the padding is masked, so each row's attention
sees only its own keys: the decode attention in core/engine/attention.py computes a
padded row over its own keys, by the same calls as alone). Joining needs plain
growing cache layers; a model with sliding-window layers lets new rows wait for the
next batch instead (`Batch.joinable`).

Which adapter runs: a batch of one activates its slot, as a lone reply always did; a
batch of several gives each row its own slot through the lean per-row LoRA forwards
(`AdapterPool.rows`), or peft's mixed batches (`adapter_names`) where a slot has layers
those do not serve.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from core.device import on_model


class Batch:
    """The state of the rows being decoded: their cache, mask and positions, row by row."""

    def __init__(self, rows, cache, mask, positions):
        self.rows = rows  # per row, whatever the scheduler keeps (it has .slot)
        self.cache = cache  # transformers DynamicCache, (rows, heads, width, dim) per layer
        self.mask = mask  # (rows, width) long: 1 where a row has a real token
        self.positions = positions  # (rows, 1) long: each row's last position

    @property
    def joinable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(self.cache, "layers", ()))

    def keep(self, indices: list[int]) -> None:
        """Only these rows stay (rows that ended leave); columns only padding leave too."""
        if len(indices) == len(self.rows):
            return
        idx = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.rows = [self.rows[i] for i in indices]
        self.mask = self.mask.index_select(0, idx)
        self.positions = self.positions.index_select(0, idx)
        if self.joinable:
            real = self.mask.any(0)
            first = int(real.to(torch.int8).argmax()) if bool(real.any()) else 0
            if first > 0:
                self.mask = self.mask[:, first:].contiguous()
                for layer in self.cache.layers:
                    if layer.is_initialized and layer.keys.numel():
                        layer.keys = layer.keys[:, :, first:].contiguous()
                        layer.values = layer.values[:, :, first:].contiguous()

    def join(self, other: "Batch") -> None:
        """Append `other`'s rows (prefilled on their own), padding the shorter cache on the left."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(other.mask, width, dim=1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows = self.rows + other.rows


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    short = width - t.shape[dim]
    if short <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Decoder:
    """Runs prefills and steps of batches on one engine's model, with the rows' adapters.
    The caller holds the engine lock around each call; `close()` ends the per-row adapter
    plans (before anything else runs the model)."""

    def __init__(self, engine):
        self.engine = engine
        self._rows_ctx: ExitStack | None = None
        self._rows_key = None
        self._model = None
        self._extra: dict = {}
        self.lean = None  # whether the last several-row forward ran the lean per-row path

    def prefill(self, rows, prompts: list[list[int]], pad: int):
        """Left-padded prompts of `rows` through the model: (Batch, logits (rows, vocab) fp32)."""
        from transformers import DynamicCache

        model = self.engine.model
        width = max(len(p) for p in prompts)
        ids = on_model(model, [[pad] * (width - len(p)) + list(p) for p in prompts])
        mask = on_model(model, [[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=model.config)
        logits = self._forward([r.slot for r in rows], input_ids=ids, attention_mask=mask, position_ids=positions,
                               past_key_values=cache)
        return Batch(list(rows), cache, mask, positions[:, -1:].clone()), logits

    def step(self, batch: Batch, tokens: list[int]):
        """Feed every row its last token: logits (rows, vocab) fp32."""
        model = self.engine.model
        ids = torch.tensor(tokens, dtype=torch.long, device=batch.mask.device).view(-1, 1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(tokens), 1)], dim=1)
        batch.positions = batch.positions + 1
        return self._forward([r.slot for r in batch.rows], input_ids=ids, attention_mask=batch.mask,
                             position_ids=batch.positions, past_key_values=batch.cache)

    def _forward(self, names, **inputs):
        engine = self.engine
        with torch.inference_mode(), engine.threads.active():
            if len(names) == 1:
                self.close()
                engine._activate(names[0])
                model, extra = engine.model, {}
            else:
                model, extra = self._several(names)
            out = model(**inputs, use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def _several(self, names):
        """The per-row adapter plans for `names`, kept across steps while the rows and the
        pool's layers stay the same (building them costs per layer)."""
        engine = self.engine
        pool = engine.pool
        key = (tuple(names), id(pool.layers()) if pool.peft is not None else None)
        if self._rows_key != key:
            self.close()
            engine._activate(None)  # layers no row targets run bare
            stack = ExitStack()
            lean = stack.enter_context(pool.rows(names))
            self._rows_ctx, self._rows_key, self.lean = stack, key, bool(lean)
            if lean or pool.peft is None:
                self._model, self._extra = engine.model, {}
            else:
                self._model, self._extra = pool.peft, {"adapter_names": [n or "__base__" for n in names]}
        return self._model, self._extra

    def close(self) -> None:
        if self._rows_ctx is not None:
            ctx, self._rows_ctx, self._rows_key = self._rows_ctx, None, None
            ctx.close()
        self.engine.pool.fast.forget_input()
