"""Weights that still live in the model file's memory map, copied into the process.

transformers loads safetensors through a memory map, and a weight whose dtype already
matches (bf16 embeddings and norms, an unquantized head) stays a view into that map.
One such view keeps the whole mapping alive, and with it every page of the file read
while the other weights were quantized: 202 MB of SmolLM2-135M's 270 MB file stayed in
the resident set of a process that holds 168 MB of weights. Those pages are clean and
the kernel may drop them, but they count in RSS and in its peak (what a memory budget,
a container limit or bench/train_bench.py sees), so the few tensors that pin the map
are copied and the map goes away. Only NF4 loads do this (core/loader.py): there the
mapped tensors are a small part of the model, where an unquantized model is all mapped.
"""

from __future__ import annotations


def _file_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed mappings of model weight files."""
    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[5].endswith((".safetensors", ".bin", ".gguf")):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((lo, hi))
    except OSError:  # not Linux: nothing to find
        pass
    return ranges


def own_file_backed_weights(model) -> int:
    """Copy every parameter and buffer of `model` whose memory is in a mapped weight file
    into ordinary memory (tied weights stay tied: the Parameter object is kept). Returns
    the bytes copied. CPU tensors only; a no-op where /proc/self/maps is not there."""
    ranges = _file_ranges()
    if not ranges:
        return 0
    copied = 0
    seen = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or tensor.device.type != "cpu":
            continue
        seen.add(id(tensor))
        ptr = tensor.untyped_storage().data_ptr()
        if any(lo <= ptr < hi for lo, hi in ranges):
            tensor.data = tensor.data.clone()
            copied += tensor.numel() * tensor.element_size()
    return copied
