"""How the base's 4-bit layers run on the CPU: bitsandbytes' fused kernel called directly,
and bf16 copies of the weights for the matmuls where those are faster.

On the CPU bitsandbytes runs a 4-bit linear layer one of two ways: on CPUs with
AVX512-BF16 it repacks the weights at the first forward and runs its fused 4-bit kernel
(`gemv_4bit`) for any number of rows; elsewhere it dequantizes the weights to bf16 on every
call and multiplies. The fused kernel is a matrix-vector kernel at heart: on a 2-core Xeon
with AMX, one pass through all 210 projections of SmolLM2-135M took 12.5 ms for one token,
30 ms for a batch step of 8 rows and 190 ms for a 64-token prompt, against 35, 37 and 54 ms
for `F.linear` on bf16 copies of the same weights (the copies are 4x the bytes to read
per step; a prompt is compute, where bf16 matrix units win). Where bitsandbytes
dequantizes every call, the copy wins everywhere.

So the engine keeps, where the memory budget allows, a bf16 copy of each 4-bit weight
(bitsandbytes' own `dequantize_4bit`, made before the first forward repacks anything),
times both ways on the loaded model at start (one token, a batch step, a prompt), and
uses the copies for decode steps and for prompts where they measured faster (decode steps
decide on one row and a batch together: a reply decodes by the same kernel alone and in a
batch). Neither faster: no copy is kept.

What that changes in the numbers: the copy holds the dequantized weights rounded to bf16,
which is what bitsandbytes' dequantizing path multiplies by; its fused kernel works from a
bf16 block scale and sums in its own order, so the two agree within bf16 rounding, not
bitwise. The start-up check refuses the copy if they disagree by more (the status line
says so), and tests/test_cpu_4bit.py asserts the same greedy tokens. Comparisons that need
bitwise stock bitsandbytes (tests against stock peft) turn the copies off. Off the CPU
nothing is installed (bitsandbytes' CUDA kernels serve).

The timing (about a second on the embedded model) runs once per machine: the figures are
kept in `<data dir>/cache/cpu_4bit.json` under a key of the CPU model and its flags, the
torch and bitsandbytes versions, the layers' shapes and the threads; delete the file to
time again. `CHORUS_DENSE_WEIGHTS`: "off", or a budget in MB (default: a quarter of the
memory available when the engine starts).

The fused kernel, called directly: bitsandbytes reaches it through `Linear4bit.forward`,
`matmul_4bit`, `gemv_4bit`, a torch op and its Python kernel, which checks the dtype of
the block scales and reads the quantization type from a tensor on every call: about 50 us
of Python per call, 11 ms of a 40 ms decode step of SmolLM2's 210 layers, against 14 ms in
the kernel itself. Once a layer is repacked, its calls go straight to the same native
function with the same arguments (`_Direct`): the same kernel on the same shapes, so
bitwise bitsandbytes' result, which the start-up check asserts; anything unexpected (another
bitsandbytes layout, the weights unpacked again by a state_dict()) goes back to
bitsandbytes' own forward.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from core.engine.timing import interleaved_ms

# The timed calls: (rows, tokens per row). Decode steps (one token per row) take one way
# for one row and for a batch alike, so that a reply decodes by the same kernel alone
# and in a batch; prompts take theirs.
SHAPES = {"one": (1, 1), "batch": (8, 1), "prompt": (1, 32)}
_TRIALS = 3
MARGIN = 0.9  # the copies must take at most this share of the 4-bit kernel's time: no coin tosses


def _four_bit_layers(model) -> list:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def budget_bytes() -> int | None:
    """The bytes the copies may take: CHORUS_DENSE_WEIGHTS in MB, 0 for "off", or a quarter
    of the memory available now."""
    env = os.environ.get("CHORUS_DENSE_WEIGHTS", "").strip().lower()
    if env in ("off", "0", "no", "false"):
        return 0
    if env:
        try:
            return int(float(env) * 2**20)
        except ValueError:
            return None  # the caller says what was wrong
    from core.memory_fit import free_bytes

    return free_bytes("cpu")[0] // 4


class Cpu4bit:
    """The CPU forwards of a model's 4-bit layers (see the module doc): which regimes use the
    bf16 copies, and whether the fused kernel is called directly."""

    def __init__(self):
        self.regimes: dict[str, bool] = {}  # "decode" / "prompt" -> uses the copy
        self.bytes = 0
        self.direct = False
        self.summary = "not used"
        self.timings: dict[str, dict] = {}  # regime -> {"bnb_ms", "dense_ms"}

    def install(self, model, budget: int | None, threads: tuple[int, int] = (1, 1)) -> "Cpu4bit":
        """budget: bytes the bf16 copies may take (None: a bad CHORUS_DENSE_WEIGHTS);
        threads: (decode, prompt) CPU threads, as the engine runs each regime."""
        layers = [m for m in _four_bit_layers(model) if m.weight.device.type == "cpu"]
        if not layers:
            self.summary = "not used (no 4-bit layers on the CPU)"
            return self
        why_not = _refusal(layers, budget)  # before the cache: no CPU probe or file read when off
        key = cached = copies = None
        if why_not is None:
            key = _cache_key(layers, threads)
            cached = _load_cache().get(key)  # this machine's figures from an earlier start
            if cached is not None and not any(_decide(cached).values()):
                self.timings, self.regimes = cached, _decide(cached)
                why_not = f"{_names(layers)} copies off (not {1 - MARGIN:.0%} faster than the 4-bit kernel: {_timed(cached)})"
            else:
                copies = {m: _dequantized(m) for m in layers}  # before any forward repacks the weights
        direct = _Direct.available()
        for m in layers:
            m._chorus_plan, m._chorus_dense = self, None
            m._chorus_direct = _Direct(m) if direct else None
            m.forward = _forward.__get__(m)
        sample = layers[: min(len(layers), 7)]  # one decoder layer's projections
        self.direct = direct and _check_direct(sample)
        if not self.direct:
            for m in layers:
                m._chorus_direct = None
        dense = why_not or self._dense(copies, sample, threads, key, cached)
        self.summary = ("fused kernel called directly; " if self.direct else "") + dense
        return self

    def _dense(self, copies, sample, threads, key, cached) -> str:
        layers = list(copies)
        need = sum(w.numel() * w.element_size() for w in copies.values())
        why = _check(sample, copies)
        if why:
            return f"{_names(layers)} copies off (self-check: {why})"
        self.timings = cached or _time_regimes(layers, copies, threads)
        if cached is None:
            _save_cache(key, self.timings)
        self.regimes = _decide(self.timings)
        timed = _timed(self.timings)
        if not any(self.regimes.values()):
            return f"{_names(layers)} copies off (not {1 - MARGIN:.0%} faster than the 4-bit kernel: {timed})"
        for m, w in copies.items():
            m._chorus_dense = w
        self.bytes = need
        used = [r for r, on in self.regimes.items() if on]
        return f"{_names(layers)} copies for {', '.join(used)} ({need / 2**20:.0f} MB; copy vs 4-bit: {timed})"

    def wants(self, x: torch.Tensor) -> bool:
        """Whether a call on `x` (rows, tokens, features) uses the copy: a decode step (one
        token per row) or a prompt, as timed."""
        tokens = x.shape[-2] if x.dim() >= 2 else 1
        return self.regimes.get("prompt" if tokens > 1 else "decode", False)

    def as_dict(self) -> dict:
        return {"summary": self.summary, "direct": self.direct, "regimes": dict(self.regimes),
                "mb": round(self.bytes / 2**20, 1), "timings": {r: dict(t) for r, t in self.timings.items()}}


def _refusal(layers, budget) -> str | None:
    """Why no weight copies can be made (a bad setting, over the budget, already repacked), or None."""
    if budget is None:
        return f"{_names(layers)} copies off (CHORUS_DENSE_WEIGHTS must be 'off' or a number of MB)"
    need = sum(m.out_features * m.in_features * _dtype(m).itemsize for m in layers)
    if need > budget:
        return f"{_names(layers)} copies off (they would take {need / 2**20:.0f} MB, over the {budget / 2**20:.0f} MB budget)"
    if any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers):
        return f"{_names(layers)} copies off (the 4-bit weights were already repacked by a forward)"
    return None


def _decide(t: dict) -> dict:
    """{"decode", "prompt"} -> whether the copies were faster, by the margin."""
    return {
        "decode": t["one"]["dense_ms"] + t["batch"]["dense_ms"] < MARGIN * (t["one"]["bnb_ms"] + t["batch"]["bnb_ms"]),
        "prompt": t["prompt"]["dense_ms"] < MARGIN * t["prompt"]["bnb_ms"],
    }


def _timed(t: dict) -> str:
    return ", ".join(f"{r} {v['dense_ms']:.1f} vs {v['bnb_ms']:.1f} ms" for r, v in t.items())


def _cache_file():
    from storage.paths import chorus_home

    return chorus_home() / "cache" / "cpu_4bit.json"


def _cache_key(layers, threads) -> str:
    import hashlib
    import json
    import platform

    import bitsandbytes

    cpu = platform.processor()
    try:
        info = open("/proc/cpuinfo", encoding="utf-8").read()
        cpu = next((l for l in info.splitlines() if l.startswith("model name")), cpu)
        cpu += next((l for l in info.splitlines() if l.startswith("flags")), "")
    except OSError:
        pass
    shapes = sorted({(m.out_features, m.in_features) for m in layers})
    what = [cpu, os.cpu_count(), torch.__version__, bitsandbytes.__version__, shapes, len(layers), list(threads), SHAPES,
            _names(layers)]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:20]


def _load_cache() -> dict:
    import json

    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: time again


def _save_cache(key: str, timings: dict) -> None:
    import json

    from core.cards.fileio import atomic_write_bytes
    from core.errors import StorageError

    data = _load_cache()
    data[key] = timings
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    except (OSError, StorageError):
        pass  # a read-only data dir: time again next start


def _check_direct(layers) -> bool:
    """The direct call against bitsandbytes' forward (which repacks the weights first): the
    same kernel on the same shapes, so bitwise, at each timed shape."""
    with torch.no_grad():
        for layer in layers:
            for shape in SHAPES.values():
                x = _inputs(layer, shape)
                ref = type(layer).forward(layer, x)
                d = layer._chorus_direct
                if d is None or not d.ready(layer, x) or not torch.equal(d(layer, x), ref):
                    return False
    return True


def _dtype(layer) -> torch.dtype:
    """What the layer computes in: bf16 unless the engine serves in fp32 (core/engine/compute_dtype.py)."""
    return layer.compute_dtype or torch.bfloat16


def _names(layers) -> str:
    return "fp32" if _dtype(layers[0]) == torch.float32 else "bf16"


def _dequantized(layer) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    dtype = _dtype(layer)
    w = layer.weight
    return bnbf.dequantize_4bit(w.data, w.quant_state).to(dtype).contiguous()


def _forward(layer, x: torch.Tensor):
    if x.dim() and x.numel() and not torch.is_grad_enabled():
        plan = layer._chorus_plan
        if plan.wants(x):
            w = layer._chorus_dense
            bias = layer.bias
            out = F.linear(x.to(w.dtype), w, None if bias is None else bias.to(w.dtype))
            return out.to(x.dtype)
        direct = layer._chorus_direct
        if direct is not None and direct.ready(layer, x):
            return direct(layer, x)
    return type(layer).forward(layer, x)


class _Direct:
    """bitsandbytes' fused CPU kernel for one repacked NF4 layer, called as its Python
    kernel calls it (backends/cpu/ops.py), without the layers in between."""

    __slots__ = ("fn", "ptr", "absmax", "n", "k", "blocksize")

    @classmethod
    def available(cls) -> bool:
        try:
            from bitsandbytes.cextension import lib

            return hasattr(lib, "gemv_4bit_inference_cpu_nf4_bf16")
        except Exception:  # bitsandbytes absent or built without its CPU library
            return False

    def __init__(self, layer):
        self.fn = None
        self.ptr = None
        self.bind(layer)

    def bind(self, layer) -> None:
        """Take the layer's packed weights once bitsandbytes has repacked them."""
        from bitsandbytes.cextension import lib

        w = layer.weight
        qs = w.quant_state
        self.fn = None
        if not getattr(qs, "packing_format_for_cpu", False) or qs.quant_type != "nf4" or w.data.dtype != torch.uint8:
            return
        if qs.absmax.dtype != torch.bfloat16 or not qs.absmax.is_contiguous() or not w.data.is_contiguous():
            return
        self.n, self.k = int(qs.shape[0]), int(qs.shape[1])
        self.ptr, self.absmax, self.blocksize = w.data.data_ptr(), qs.absmax, int(qs.blocksize)
        self.fn = lib.gemv_4bit_inference_cpu_nf4_bf16

    def ready(self, layer, x) -> bool:
        if x.dtype != torch.bfloat16 or (layer.compute_dtype not in (None, torch.bfloat16)):
            return False
        w = layer.weight
        if self.fn is None or w.data.data_ptr() != self.ptr or w.quant_state.absmax is not self.absmax:
            type(layer).forward(layer, x[..., :1, :] if x.dim() >= 2 else x)  # let bitsandbytes (re)pack
            self.bind(layer)
        return self.fn is not None and w.data.data_ptr() == self.ptr

    def __call__(self, layer, x):
        import ctypes as ct

        a = x.reshape(-1, self.k)
        if not a.is_contiguous():
            a = a.contiguous()
        m = a.shape[0]
        out = torch.empty(m, self.n, dtype=torch.bfloat16)
        self.fn(ct.c_int64(m), ct.c_int64(self.n), ct.c_int64(self.k), ct.c_void_p(a.data_ptr()), ct.c_void_p(self.ptr),
                ct.c_void_p(self.absmax.data_ptr()), ct.c_void_p(out.data_ptr()), ct.c_int64(self.blocksize),
                ct.c_int64(a.stride(0)), ct.c_int64(out.stride(0)))
        if layer.bias is not None:
            out += layer.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.n)


def _inputs(layer, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + shape[0] * shape[1])
    return torch.randn(*shape, layer.in_features, generator=g).to(_dtype(layer))


def _check(layers, copies) -> str | None:
    """The copy against bitsandbytes' own forward on these layers (one row and a prompt).
    Bound per output, with m = |x| @ |w|: bf16 rounding of each result (2**-8 of its
    size, twice) plus the block scale rounded to bf16 by the fused kernel (2**-8 * m),
    plus fp32 summation order (n * 2**-24 * m). A wrong copy lands far outside it."""
    with torch.no_grad():
        for layer in layers:
            w = copies[layer]
            for shape in (SHAPES["one"], SHAPES["prompt"]):
                x = _inputs(layer, shape)
                ref = type(layer).forward(layer, x).float()
                fast = F.linear(x, w).float()
                m = F.linear(x.abs().float(), w.abs().float())
                bound = 2.0**-8 * (ref.abs() + fast.abs()) + (2.0**-8 + layer.in_features * 2.0**-24) * m
                if not bool(((fast - ref).abs() <= bound).all()):
                    worst = float(((fast - ref).abs() - bound).max())
                    return f"a {layer.out_features}x{layer.in_features} copy differs from bitsandbytes by {worst:.3g} beyond bf16 rounding"
    return None


def _time_regimes(layers, copies, threads) -> dict:
    """Median ms of one call through `layers` per regime, bitsandbytes' forward against the
    copies, on the threads the engine runs that regime on."""
    out = {}
    before = torch.get_num_threads()
    try:
        for name, shape in SHAPES.items():
            torch.set_num_threads(threads[1] if name == "prompt" else threads[0])
            out[name] = _time_one(layers, copies, shape)
    finally:
        torch.set_num_threads(before)
    return out


def _time_one(layers, copies, shape) -> dict:
    xs = [_inputs(layer, shape) for layer in layers]
    ways = {
        "bnb_ms": lambda: [_forward(layer, x) for layer, x in zip(layers, xs)],  # no copies installed yet
        "dense_ms": lambda: [F.linear(x, copies[layer]) for layer, x in zip(layers, xs)],
    }
    with torch.no_grad():  # the warm-up call repacks the layers bitsandbytes has not repacked yet
        timed = interleaved_ms(ways, _TRIALS)
    return {k: round(v, 3) for k, v in timed.items()}
