"""Lean LoRA forwards for the adapter pool's slots: one persona for the batch, or one per row.

peft's LoRA forward is general (variants, dropout, merging, autocast, bias, several active
adapters, sub-batches per adapter) and costs some 20 small tensor ops and Python checks per
module on every token; SmolLM2 has 210 LoRA modules. Serving needs only

    result = base(x) + cast(B @ (A @ cast(x)) * scale)

so each supported LoRA layer gets a `forward` that computes that in peft's order of
operations. What that guarantees, and where (tests/test_lora_fast.py checks each):

- Prompts (several tokens, one persona): the same `F.linear` calls on the same shapes as
  peft, so bitwise peft's output on any machine.
- One token (decode): `torch.mv` instead of `F.linear` on a 1-row matrix, without the
  reshapes and the gemm set-up, which cost as much as the arithmetic at these sizes. These
  are other kernels: the same dot products, but the BLAS may sum them in another order, so
  the result is within bf16 rounding of `F.linear`'s (bitwise on some CPUs, not all; one
  with AVX512-FP16 differs). `self_check` measures that at engine start; where it fails,
  `use_vector(False)` sends one-token steps through `F.linear`, bitwise peft again.
- Scale folded into B where that is exact: multiplying by a power of two only moves the
  exponent, so `(B @ h) * s == (s * B) @ h` bit for bit with any kernel; peft's `scaling` is
  then 1.0 and its own forward (kept for everything else) still computes the same numbers.
- Rows: for a batch whose rows want different personas, each row applies its own slot's
  matrices (matrix-vector products into one buffer for the batch, then one cast and one
  add), where peft gathers and scatters a sub-batch per adapter. The base model's 4-bit
  matmuls, the expensive part, serve all rows at once. A batch runs other kernel shapes
  than a row alone (and than peft's sub-batches): within bf16 rounding of them, the same
  greedy tokens in the tests. (Stacking the rows' matrices for `torch.bmm`, Punica/S-LoRA
  style, was tried: it copies every row's adapter once per group.)

An engine that serves in fp32 (core/engine/compute_dtype.py) runs the same paths with fp32
results: the final cast is then a copy, and the bounds above hold with room to spare.

Switching persona sets one attribute (`FastLora.active`); each layer looks its slot up in a
dict. Layers of other kinds (embedding LoRA, lora_bias, variants: Chorus refuses such
adapters today) keep peft's forward, which follows peft's active-adapter lists that the
pool keeps in step. The buffers make a model's forwards non-reentrant: the engine's lock
already runs one generation at a time.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_BF16 = torch.bfloat16
_VEC_DTYPES = (torch.bfloat16, torch.float32)  # compute dtypes of the one-token path (core/engine/compute_dtype.py)
_mv = torch.mv
_grad_on = torch.is_grad_enabled


class _Entry:
    """What one layer needs to apply one slot: A (rank, in), B (out, rank), the scale left
    after folding (1.0 when folded into B), and a buffer for A @ x."""

    __slots__ = ("A", "B", "scale", "mv", "h")

    def __init__(self, A, B, scale, vector=True):
        self.A, self.B, self.scale = A, B, scale
        self.h = A.new_empty(A.shape[0])
        self.use_mv(vector)

    def use_mv(self, vector: bool) -> None:
        # fp32 LoRA matrices only (the NF4 case): self_check measures mv against F.linear there.
        self.mv = vector and self.A.dtype == torch.float32


class _State:
    __slots__ = ("owner", "base", "stock", "add_then_cast", "vec_ok", "entries", "rows", "x32", "x32_3d", "one", "o32", "o16")

    def __init__(self, owner, layer, stock, add_then_cast):
        base = layer.base_layer
        self.owner = owner  # the FastLora whose `active` slot this layer follows
        self.base = base  # the wrapped base layer (Linear4bit or Linear)
        self.stock = stock  # peft's own forward, for everything the lean one does not handle
        self.add_then_cast = add_then_cast  # peft's lora.Linear adds in the LoRA dtype, then casts
        self.entries: dict[str, _Entry] = {}
        self.rows: _RowPlan | None = None  # set while a mixed batch runs
        # One-token buffers (bf16 or fp32 compute, fp32 LoRA: the NF4 cases): the input in
        # fp32, shared with siblings that read the same input, and B @ h in fp32 and in the
        # compute dtype ("o16": bf16 unless the engine serves in fp32).
        compute = getattr(base, "compute_dtype", None)
        self.vec_ok = not add_then_cast and compute in _VEC_DTYPES
        n_in, n_out = base.in_features, base.out_features
        self.x32 = owner.input_buffer(n_in)
        self.x32_3d = self.x32.view(1, 1, n_in)
        self.one = self.x32_3d.shape  # the input shape of a one-token step
        self.o32 = torch.empty(n_out)
        self.o16 = torch.empty(1, 1, n_out, dtype=compute if self.vec_ok else _BF16)


def _forward(layer, x, *args, **kwargs):
    st = layer._chorus
    owner = st.owner
    if args or kwargs or layer._disable_adapters or owner.stock_only:
        return st.stock(x, *args, **kwargs)
    result = st.base(x)
    if st.rows is not None:
        return _rows_forward(st, x, result)
    e = st.entries.get(owner.active)
    if e is None:
        return result
    if e.mv and st.vec_ok and x.shape == st.one and result.dtype == st.o16.dtype and not _grad_on():
        # One token: x in fp32 (once for q/k/v and once for gate/up), A @ x, B @ h, cast, add;
        # into buffers, no allocations. Within bf16 rounding of F.linear (module docstring).
        if owner.seen is not x or owner.seen_buffer is not st.x32:  # siblings pass the same tensor
            st.x32_3d.copy_(x)
            owner.seen, owner.seen_buffer = x, st.x32
        out = _mv(e.B, _mv(e.A, st.x32, out=e.h), out=st.o32)
        if e.scale != 1.0:  # peft multiplies by 1.0 too, which changes nothing
            out.mul_(e.scale)
        return result.add_(st.o16.copy_(out))  # copy_ casts (round to nearest, as .to does)
    A = e.A
    out = F.linear(F.linear(x.to(A.dtype), A), e.B)
    if e.scale != 1.0:
        out = out * e.scale
    if st.add_then_cast:
        return (result + out).to(result.dtype)
    return result.add_(out.to(result.dtype))  # result is this call's own fresh tensor


class _RowPlan:
    """One layer's work for a mixed batch: per row its slot's entry (None: no adapter) and,
    for one-token steps of `len(entries)` rows, buffers and their per-row views."""

    __slots__ = ("entries", "items", "x32", "x3", "o3", "o16", "vec", "every_row", "adds")  # o3: o32 as o16's shape

    def __init__(self, owner, st, entries):
        rows = len(entries)
        n_in, n_out = st.base.in_features, st.base.out_features
        self.entries = entries
        self.x32 = owner.input_buffer(n_in, rows)
        self.x3 = self.x32.view(rows, 1, n_in)
        o32 = torch.empty(rows, n_out)
        self.o3 = o32.view(rows, 1, n_out)
        self.o16 = torch.empty(rows, 1, n_out, dtype=st.o16.dtype)
        self.items = [(e.A, e.B, e.h, e.scale, self.x32[i], o32[i]) for i, e in enumerate(entries) if e is not None]
        self.vec = all(e is None or e.mv for e in entries)
        self.every_row = all(e is not None for e in entries)
        self.adds = [(i, self.o16[i]) for i, e in enumerate(entries) if e is not None]  # rows to add to


def _rows_forward(st, x, result):
    """Each row its own adapter, as peft's mixed batches compute it for a row alone: one
    token per row, matrix-vector products into buffers; a prompt, F.linear per row."""
    p = st.rows
    if p.vec and st.vec_ok and x.shape == p.x3.shape and result.dtype == p.o16.dtype and not _grad_on():
        owner = st.owner
        if owner.seen is not x or owner.seen_buffer is not p.x32:  # siblings pass the same tensor
            p.x3.copy_(x)
            owner.seen, owner.seen_buffer = x, p.x32
        for A, B, h, scale, x_row, o_row in p.items:
            _mv(B, _mv(A, x_row, out=h), out=o_row)
            if scale != 1.0:
                o_row.mul_(scale)
        p.o16.copy_(p.o3)
        if p.every_row:
            return result.add_(p.o16)
        for i, o16 in p.adds:  # rows without an adapter stay exactly the base's
            result[i].add_(o16)
        return result
    for i, e in enumerate(p.entries):
        if e is not None:
            out = F.linear(F.linear(x[i : i + 1].to(e.A.dtype), e.A), e.B)
            if e.scale != 1.0:
                out = out * e.scale
            result[i : i + 1].add_(out.to(result.dtype))  # peft's mixed batches cast, then add
    return result


def supported(layer) -> bool:
    """Layers whose peft forward is plain `base + B(A(x)) * scale` (Linear and 4-bit Linear)."""
    from peft.tuners.lora import Linear as LoraLinear

    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    except ImportError:  # bitsandbytes absent
        LoraLinear4bit = LoraLinear
    return isinstance(layer, (LoraLinear, LoraLinear4bit)) and not getattr(layer, "fan_in_fan_out", False)


def exact_fold(scale: float) -> bool:
    """True when multiplying B by `scale` gives bitwise the products peft scales afterwards."""
    if scale <= 0 or not math.isfinite(scale):
        return False
    mantissa, _ = math.frexp(scale)
    return mantissa == 0.5


class FastLora:
    """The lean forwards of one model's LoRA layers, and which slot (or rows) they apply."""

    def __init__(self):
        self.active: str | None = None  # the slot every layer applies; None: the bare base
        self.stock_only = False  # True: every layer runs peft's own forward (for comparisons)
        self.vector = True  # one-token steps by torch.mv (False: F.linear, see use_vector)
        self._slots: dict[str, list] = {}  # slot -> the layers that hold an entry for it
        self._plain_cache: dict[str, list] = {}  # slot -> per-layer "runs the lean forward"
        self._inputs: dict[tuple, object] = {}  # (in_features, rows) -> fp32 input buffer
        self.seen = None  # the input last copied into an fp32 buffer (held, so its id stays
        self.seen_buffer = None  # unique), and that buffer

    def input_buffer(self, n: int, rows: int | None = None):
        """The fp32 buffer for one-token inputs of width n, shared by layers: a vector, or
        with `rows`, a (rows, n) matrix for a mixed batch (even of one row)."""
        if (n, rows) not in self._inputs:
            self._inputs[(n, rows)] = torch.empty(n) if rows is None else torch.empty(rows, n)
        return self._inputs[(n, rows)]

    def forget_input(self) -> None:
        """Drop the reference to the last input (called after each request)."""
        self.seen = self.seen_buffer = None

    def install(self, layers) -> None:
        """Give every supported layer the lean forward (idempotent)."""
        from peft.tuners.lora import Linear as LoraLinear

        for layer in layers:
            # CPU only: the buffers are CPU tensors, and the speed was measured (and the engine's
            # self-check runs) on the CPU's BLAS. On CUDA every layer keeps peft's forward.
            if "_chorus" in layer.__dict__ or not supported(layer) or layer.base_layer.weight.device.type != "cpu":
                continue
            layer._chorus = _State(self, layer, layer.forward, type(layer) is LoraLinear)
            layer.forward = _forward.__get__(layer)

    # slots ---------------------------------------------------------------------

    def folds(self, name: str, layers, scales) -> list:
        """Per layer, the factor to multiply B by while filling slot `name`: its scale where
        folding is exact and the layer runs the lean forward, else 1.0."""
        plain = self._plain_flags(name, layers)
        return [scale if ok and scale != 1.0 and exact_fold(scale) else 1.0 for ok, scale in zip(plain, scales)]

    def load_scales(self, name: str, layers, scales) -> None:
        """Slot `name` was just filled: set each layer's remaining scale (1.0 where folded)."""
        holders = []
        for ok, layer, scale in zip(self._plain_flags(name, layers), layers, scales):
            layer.scaling[name] = scale
            if not ok:
                continue
            st = layer._chorus
            entry = st.entries.get(name)
            if entry is None:
                st.entries[name] = _Entry(layer.lora_A[name].weight, layer.lora_B[name].weight, scale, self.vector)
            else:
                entry.scale = scale
            holders.append(layer)
        self._slots[name] = holders

    def _plain_flags(self, name: str, layers) -> list:
        """Which layers run the lean forward for slot `name` (fixed for the slot's life)."""
        known = self._plain_cache.get(name)
        if known is None or len(known) != len(layers):
            known = [("_chorus" in layer.__dict__) and self._plain(layer, name) for layer in layers]
            self._plain_cache[name] = known
        return known

    @staticmethod
    def _plain(layer, name) -> bool:
        return (
            name in layer.lora_A
            and name not in getattr(layer, "lora_variant", {})
            and getattr(layer.lora_B[name], "bias", None) is None
            and not getattr(layer, "merged_adapters", None)
        )

    def use_vector(self, on: bool) -> None:
        """One-token steps by torch.mv (on) or by F.linear, peft's own kernel (off), for
        every slot from now on (the engine turns it off when `self_check` fails)."""
        self.vector = on
        for layers in self._slots.values():
            for layer in layers:
                for entry in layer._chorus.entries.values():
                    entry.use_mv(on)

    def remove_slot(self, name: str) -> None:
        self._plain_cache.pop(name, None)
        for layer in self._slots.pop(name, ()):
            layer._chorus.entries.pop(name, None)

    def covers(self, name: str, layers) -> bool:
        """True when every LoRA layer holding slot `name` runs the lean forward for it."""
        for layer in layers:
            if name in layer.lora_A and ("_chorus" not in layer.__dict__ or name not in layer._chorus.entries):
                return False
        return True

    # rows ----------------------------------------------------------------------

    @contextmanager
    def rows(self, names: list, layers):
        """Within the block, row i of a batch gets slot names[i] (None: no adapter).

        Yields False, changing nothing, when a layer that holds one of the slots does not
        run the lean forward for it; the caller then uses peft's mixed batches."""
        names = list(names)
        ok = all(self.covers(n, layers) for n in set(names) if n is not None)
        plans = {}
        for layer in layers if ok else ():
            st = layer.__dict__.get("_chorus")
            if st is None:
                continue
            entries = [st.entries.get(n) if n is not None else None for n in names]
            if any(e is not None for e in entries):
                plans[layer] = _RowPlan(self, st, entries)
        if not ok:
            yield False
            return
        try:
            for layer, plan in plans.items():
                layer._chorus.rows = plan
            yield True
        finally:
            for layer in plans:
                layer._chorus.rows = None


def self_check(shapes, rank: int = 16, seed: int = 0) -> str | None:
    """Compare the one-token kernel (`_mv`, as the lean forwards call it) with F.linear on
    this machine, for LoRA matrices of the model's linear shapes (in, out) at `rank`.
    None when they agree within bf16 rounding; else what disagreed. A few ms.

    The bound, per output element, with m = |B| @ (|A| @ |x|) (the sum of the products'
    magnitudes): two fp32 sums of the same n products in different orders differ by at
    most about n * 2**-24 * m (n = in + rank over the two products); each result is then
    rounded to bf16 (8 significant bits: off by at most 2**-8 of its value), so the bf16
    values that reach the model differ by at most n * 2**-24 * m + 2**-8 * (|fast| + |ref|).
    A kernel that computes something else (even 2% off) lands outside it.
    CPU tensors: the lean forwards run on the CPU only."""
    g = torch.Generator().manual_seed(seed)
    for n_in, n_out in sorted(set(shapes)):
        A = torch.randn(rank, n_in, generator=g) * 0.05
        B = torch.randn(n_out, rank, generator=g) * 0.05
        x = torch.randn(n_in, generator=g).bfloat16().float()  # inputs come from bf16 activations
        with torch.no_grad():
            fast = _mv(B, _mv(A, x, out=A.new_empty(rank)), out=B.new_empty(n_out))
            ref = F.linear(F.linear(x.view(1, 1, n_in), A), B).view(-1)
            m = torch.mv(B.abs(), torch.mv(A.abs(), x.abs()))
            bound = (n_in + rank) * 2.0**-24 * m + 2.0**-8 * (fast.abs() + ref.abs())
            off = (fast.bfloat16().float() - ref.bfloat16().float()).abs()
        if not bool((off <= bound).all()):
            worst = int((off - bound).argmax())
            return (f"torch.mv and F.linear differ beyond bf16 rounding for a {n_out}x{rank}x{n_in} LoRA "
                    f"({float(fast[worst]):.4g} against {float(ref[worst]):.4g})")
    return None
