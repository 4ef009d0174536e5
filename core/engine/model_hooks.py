"""What the engine installs on the model it serves, besides its adapters: the CPU-thread
policy for prompts and one-token steps (`default_threads`, `DecodeThreads`) and the dense
head input (`_dense_head_input`). bench/models.py gives the models it compares the same.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def default_threads() -> tuple[int, int]:
    """(decode, prompt) CPU threads: CHORUS_THREADS="decode,prompt" if set; else 1 and 1 on
    a machine with 2 cores or fewer, 2 and all of torch's on a bigger one.

    One decode step of a 135M model is some 300 small ops; a second OpenMP thread on 2
    cores that something else also uses (the browser, other jobs) makes every op wait for a
    descheduled thread. Measured on 2 shared cores: decode 31 ms/step on 1 thread, 60-1900
    on 2; a 156-token prompt 0.7-1.1 s on 1 thread, 3.1-3.7 s on 2 (idle, 2 threads were
    1.75x faster on prompts and 10% on decode). Bigger machines are not measured here."""
    import torch

    env = os.environ.get("CHORUS_THREADS", "")
    if env:
        decode, _, prompt = env.partition(",")
        return max(1, int(decode)), max(1, int(prompt or decode))
    if (os.cpu_count() or 1) <= 2:
        return 1, 1
    return 2, torch.get_num_threads()


class DecodeThreads:
    """Runs a model's forwards of at most `small` tokens on `decode` threads, bigger ones
    (prompts) on `prefill` threads, while `active()` is entered; restores the setting after.
    Outputs do not depend on it here (the GEMMs split rows and columns, not sums; tests
    compare replies on these threads with stock peft on torch's default)."""

    def __init__(self, model, decode: int, prefill: int, small: int = 8):
        self.decode, self.prefill, self.small = decode, prefill, small
        self._on = 0
        model.register_forward_pre_hook(self._pick, with_kwargs=True)

    def _pick(self, module, args, kwargs):
        import torch

        if not self._on:
            return None
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0] if args else kwargs.get("inputs_embeds")
        tokens = ids.shape[0] * ids.shape[1] if ids is not None and ids.dim() >= 2 else self.small + 1
        want = self.decode if tokens <= self.small else self.prefill
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        return None

    @contextmanager
    def active(self):
        import torch

        before = torch.get_num_threads()
        self._on += 1
        try:
            yield
        finally:
            self._on -= 1
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def _dense_head_input(module, args):
    """lm_head's input as a freshly laid out tensor. transformers passes it
    `hidden[:, -1:, :]` (logits for the last position only), a view whose batch stride is
    the whole prompt's; on this CPU the bf16 matmul then takes a path 16x slower (106 ms
    against 6.4 ms for SmolLM2's 49152x576 head) that gave the same bits here (not a law:
    another layout may take another kernel, within bf16 rounding). Copying the
    last position's row (576 values per row) puts it back on the fast path."""
    import torch

    x = args[0] if args else None
    if x is None or x.dim() < 2 or x.stride(0) == x[0].numel():
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])
