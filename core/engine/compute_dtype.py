"""What the served model computes in, bf16 or fp32, chosen on the machine it runs on.

bf16 halves the bytes of the weights that stay unquantized and of the key/value cache, and
on CPUs with bf16 matrix units (AVX512-BF16, AMX) its matmuls are the fast ones. Elsewhere
torch has no fast bf16 matmul: on a 2-vCPU AMD EPYC with AVX2 only (2026-12-07), one
576 -> 1536 projection took 0.19 ms for one token in bf16 against 0.09 in fp32, and 6.5 ms
against 0.8 for 32 tokens; SmolLM2-135M answered at a few tokens a second.

So on the CPU, before the model is loaded, the engine times one projection of the model's
shape (capped: the ratio is what counts) both ways, for a decode step on the decode
threads and for a prompt on the prompt threads, and serves in fp32 only when fp32 is no
slower for a decode step and faster by the margin overall, and only when the model still
fits in memory with fp32's larger weights and cache (else bf16: slower beats refused).
CUDA computes in bf16. `CHORUS_SERVE_DTYPE=bf16|fp32` forces one. The choice, its reason
and the timings are in the engine's status (`fast_paths["compute"]`).

The 4-bit weights stay NF4 either way: the dtype is what they are dequantized to and
multiplied in, what the norms, embeddings and head are kept in, and the cache's width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.device import forced_dtype

MARGIN = 0.9  # fp32 must take at most this share of bf16's time: no coin tosses
_TRIALS = 5
_ROWS = {"decode": 1, "prompt": 32}
_CAP = (1024, 4096)  # (in, out) features at most: larger shapes only make the probe slower


@dataclass
class Choice:
    dtype: object  # torch.bfloat16 or torch.float32
    why: str
    timings: dict = field(default_factory=dict)  # regime -> {"bf16_ms", "fp32_ms"}

    @property
    def name(self) -> str:
        return "fp32" if str(self.dtype).endswith("float32") else "bf16"

    def as_dict(self) -> dict:
        return {**asdict(self), "dtype": self.name}


def for_source(source, context_limit: int | None, quantize: bool, threads: tuple[int, int]) -> Choice:
    """The choice for the model in `source` (a ModelSource) on this machine, fp32 only where
    it fits with `context_limit` tokens of cache; bf16 for an unquantized load (kept for
    comparisons) and where the config cannot be read."""
    import torch
    from transformers import AutoConfig

    from core.device import pick_device
    from core.memory_fit import estimate, free_bytes

    if not quantize:
        return Choice(torch.bfloat16, "bf16 (the unquantized model, loaded for comparisons)")
    device = pick_device()
    try:
        config = AutoConfig.from_pretrained(str(source.path))
    except (OSError, ValueError):
        return Choice(torch.bfloat16, "bf16 (the model's config could not be read to time fp32)")

    def fits_in_fp32() -> bool:
        try:
            need = estimate(config, context=context_limit or 4096, quantize=quantize, device=device, width=4)
        except Exception:  # a config the meta build cannot take: no estimate, keep the smaller bf16
            return False
        return need.total_bytes <= free_bytes(device)[0]

    return choose(config, device, threads, fits_in_fp32)


def choose(config, device: str, threads: tuple[int, int], fits_in_fp32=None) -> Choice:
    """The dtype to serve `config`'s model in on `device`, with (decode, prompt) threads.
    fits_in_fp32: a callable that says whether the model fits in memory in fp32 (None: it does)."""
    import torch

    forced = forced_dtype("CHORUS_SERVE_DTYPE")
    if forced is not None:
        return Choice(forced, f"{'fp32' if forced == torch.float32 else 'bf16'} (set by CHORUS_SERVE_DTYPE)")
    if device != "cpu":
        return Choice(torch.bfloat16, f"bf16 on {device}")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_in = min(int(text.hidden_size), _CAP[0])
    n_out = min(int(getattr(text, "intermediate_size", None) or 4 * text.hidden_size), _CAP[1])
    timings = time_projection(n_in, n_out, threads)
    shown = ", ".join(f"{r} {t['fp32_ms']:.2f} vs {t['bf16_ms']:.2f} ms" for r, t in timings.items())
    total = {d: sum(t[f"{d}_ms"] for t in timings.values()) for d in ("bf16", "fp32")}
    if timings["decode"]["fp32_ms"] > timings["decode"]["bf16_ms"] or total["fp32"] >= MARGIN * total["bf16"]:
        return Choice(torch.bfloat16, f"bf16 (fp32 not faster on this CPU: {shown})", timings)
    if fits_in_fp32 is not None and not fits_in_fp32():
        return Choice(torch.bfloat16, f"bf16 (fp32 would be faster here, {shown}, but the model would not fit in memory)",
                      timings)
    return Choice(torch.float32, f"fp32 (bf16 matmuls {total['bf16'] / max(total['fp32'], 1e-9):.1f}x slower on this CPU: "
                                 f"{shown})", timings)


def time_projection(n_in: int, n_out: int, threads: tuple[int, int]) -> dict:
    """Median ms of one n_in -> n_out projection in bf16 and fp32, per regime, on the
    threads the engine runs that regime on (core/engine/timing.py)."""
    import torch
    import torch.nn.functional as F

    from core.engine.timing import interleaved_ms

    g = torch.Generator().manual_seed(0)
    w32 = torch.randn(n_out, n_in, generator=g) / n_in**0.5
    weights = {"bf16": w32.bfloat16(), "fp32": w32}
    before = torch.get_num_threads()
    out = {}
    try:
        with torch.no_grad():
            for regime, rows in _ROWS.items():
                torch.set_num_threads(threads[1] if regime == "prompt" else threads[0])
                x32 = torch.randn(rows, n_in, generator=g)
                xs = {"bf16": x32.bfloat16(), "fp32": x32}
                ways = {d: (lambda d=d: F.linear(xs[d], weights[d])) for d in weights}
                timed = interleaved_ms(ways, _TRIALS, reps=max(1, 32 // rows))  # a decode step's 0.1 ms over several calls
                out[regime] = {f"{d}_ms": round(ms, 4) for d, ms in timed.items()}
    finally:
        torch.set_num_threads(before)
    return out
