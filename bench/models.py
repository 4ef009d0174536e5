"""The models bench/run.py sets beside the Chorus engine: a bare NF4 base with no LoRA
wrappers at all, and stock peft. Each is its own NF4 copy loaded by core.loader (so all
decode with the attention of core/engine/attention.py) and gets the model hooks Chorus's engine
gives its model: the CPU-thread policy (`DecodeThreads`), the dense head input
(`_dense_head_input`, a forward pre-hook on lm_head) and the 4-bit layers' CPU forwards
(`Cpu4bit`: the fused kernel called directly, bf16 copies where timed faster, with the same
budget and the figures the engine cached); and the attention the engine ended up
with (its start-up self-check may fall back to transformers' sdpa). The head hook can be switched off
(`head_hook`) to time stock peft as it ships.
"""

from __future__ import annotations

import contextlib
import time

from core.device import on_model
from core.engine import cpu_4bit
from core.engine.model_hooks import DecodeThreads, _dense_head_input


class Bare:
    """The base model as loaded: no peft, no LoRA wrappers, the engine's model hooks."""

    def __init__(self, source, threads, attn: str | None = None, dtype=None):
        from core.loader import load_base

        self.model, self.tok, self.info = load_base(source, dtype=dtype)  # the engine's compute dtype: like for like
        self.cpu_4bit = cpu_4bit.Cpu4bit().install(self.model, cpu_4bit.budget_bytes(), (threads.decode, threads.prefill))
        if attn and self.model.config._attn_implementation != attn:
            # the engine's self-check may have turned its decode attention off on this machine
            self.model.set_attn_implementation(attn)
        self.threads = DecodeThreads(self.model, threads.decode, threads.prefill)
        self.head_hook = True
        head = self.model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(lambda module, args: _dense_head_input(module, args) if self.head_hook else None)

    @property
    def runner(self):
        """What generate() and forward steps are called on."""
        return self.model

    @contextlib.contextmanager
    def hooked(self, on: bool):
        """Within the block, lm_head gets the dense input (on) or transformers' view (off)."""
        before, self.head_hook = self.head_hook, on
        try:
            yield
        finally:
            self.head_hook = before

    def generate(self, batch, mask, tokens, **extra):
        import torch

        with torch.inference_mode(), self.threads.active():
            return self.runner.generate(input_ids=batch, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                        do_sample=False, pad_token_id=self.tok.pad_token_id, **extra)

    def timed(self, ids, tokens, **extra):
        """(seconds, new token rows) of one greedy generation of `ids` (one prompt or a batch)."""
        import torch

        from bench.measure import sync

        x = on_model(self.model, ids if isinstance(ids[0], list) else [ids])
        sync(x.device)
        t0 = time.perf_counter()
        out = self.generate(x, torch.ones_like(x), tokens, **extra)
        sync(x.device)
        return time.perf_counter() - t0, out[:, x.shape[1]:]

    def decode(self, ids, adapter=None, tokens=64):
        """(tokens/s, text) of one greedy reply."""
        seconds, new = self.timed(ids, tokens)
        return new.shape[1] / seconds, self.tok.decode(new[0], skip_special_tokens=True)


class Stock(Bare):
    """Stock peft (`PeftModel.from_pretrained`, `load_adapter`, `set_adapter`,
    `disable_adapter()`, `adapter_names` mixed batches) on its own NF4 copy."""

    def __init__(self, source, adapters, threads, attn: str | None = None, dtype=None):
        from peft import PeftModel

        super().__init__(source, threads, attn, dtype)
        self.peft = PeftModel.from_pretrained(self.model, str(adapters[0]), adapter_name="p0")
        for i, a in enumerate(adapters[1:4], start=1):
            self.peft.load_adapter(str(a), adapter_name=f"p{i}")
        self.peft.eval()

    @property
    def runner(self):
        return self.peft

    def use(self, adapter):
        """Context manager: `adapter` active (None: the bare base, `disable_adapter()`)."""
        if adapter is None:
            return self.peft.disable_adapter()
        self.peft.set_adapter(adapter)
        return contextlib.nullcontext()

    def decode(self, ids, adapter=None, tokens=64):
        with self.use(adapter):
            return super().decode(ids, None, tokens)
