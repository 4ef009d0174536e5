"""Loaded weights own their memory (core/file_backed.py): no parameter of a loaded model is
a view into the model file's memory map, which would keep the whole file resident."""

from core.file_backed import _file_ranges, own_file_backed_weights
from core.loader import load_base
from core.model_source import ModelSource


def _in_file(tensor, ranges) -> bool:
    ptr = tensor.untyped_storage().data_ptr()
    return any(lo <= ptr < hi for lo, hi in ranges)


def test_no_weight_is_left_in_the_files_memory_map(tiny_model_dir, monkeypatch):
    import core.file_backed as fb

    # Without the copy, transformers leaves the bf16 weights (embeddings, norms) in the map.
    monkeypatch.setattr(fb, "own_file_backed_weights", lambda model: 0)
    plain, _, _ = load_base(ModelSource("tiny", tiny_model_dir), quantize=True, device="cpu")
    ranges = _file_ranges()
    pinned = [n for n, p in plain.named_parameters() if _in_file(p, ranges)]
    assert pinned, "the test would prove nothing: transformers copied every weight itself"
    monkeypatch.undo()

    # What load_base does: those weights copied, the tied head still tied to the embedding.
    emb = plain.get_input_embeddings().weight
    before = emb.detach().clone()
    copied = own_file_backed_weights(plain)
    assert copied >= emb.numel() * emb.element_size()
    assert not [n for n, p in plain.named_parameters() if _in_file(p, _file_ranges())]
    assert plain.get_output_embeddings().weight is emb and emb.equal(before)

    model, _, _ = load_base(ModelSource("tiny", tiny_model_dir), quantize=True, device="cpu")
    assert not [n for n, p in model.named_parameters() if _in_file(p, _file_ranges())]
