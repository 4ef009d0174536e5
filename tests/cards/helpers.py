"""Fixture builders for card tests: PNGs with arbitrary text chunks, zips, adapters."""

from __future__ import annotations

import base64
import io
import json
import stat
import struct
import zipfile
import zlib

from core.cards.png import build_png, placeholder_png, parse_chunks


def b64json(obj) -> bytes:
    return base64.b64encode(json.dumps(obj).encode("utf-8"))


def png_with_text(*chunks: tuple[bytes, bytes], image: bytes | None = None) -> bytes:
    """A real PNG (Pillow-made unless `image` is given) with tEXt chunks (keyword, value) before IEND."""
    if image is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
        image = buf.getvalue()
    parts = parse_chunks(image)
    text = [(b"tEXt", kw + b"\0" + value) for kw, value in chunks]
    return build_png(parts[:-1] + text + parts[-1:])


def itxt_chunk(keyword: bytes, text: bytes, compressed: bool = False) -> tuple[bytes, bytes]:
    body = zlib.compress(text) if compressed else text
    return (b"iTXt", keyword + b"\0" + bytes([1 if compressed else 0, 0]) + b"\0\0" + body)


def png_with_chunks(*chunks: tuple[bytes, bytes]) -> bytes:
    parts = parse_chunks(placeholder_png("x"))
    return build_png(parts[:-1] + list(chunks) + parts[-1:])


def safetensors_bytes(n_floats: int = 8, seed: int = 1) -> bytes:
    payload = bytes((seed * 7 + i) % 256 for i in range(n_floats * 4))
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": {
                "dtype": "F32",
                "shape": [2, n_floats // 2],
                "data_offsets": [0, n_floats * 4],
            },
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + payload


FINGERPRINT = {
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "base_fingerprint": "sha256:" + "ab" * 32,
    "architecture": "LlamaForCausalLM",
    "vocab_size": 49152,
}


def adapter_files(seed: int = 1, fingerprint: dict | None = FINGERPRINT) -> dict[str, bytes]:
    files = {
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}).encode(),
        "adapter_model.safetensors": safetensors_bytes(seed=seed),
        "training_config.json": json.dumps({"lr": 2e-4, "steps": 40}).encode(),
        "training_log.jsonl": b'{"step": 1, "loss": 4.2}\n{"step": 2, "loss": 3.9}\n',
        "evaluation.json": b'{"held_out_loss": 2.19}',
    }
    if fingerprint is not None:
        files["chorus_adapter.json"] = json.dumps(fingerprint).encode()
    return files


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


V2_CARD = {
    # SillyTavern's V2 export: V1 fields repeated at the top level, plus its own keys.
    "name": "Captain Mira",
    "description": "A retired pirate captain who runs a tavern.",
    "personality": "gruff, kind",
    "scenario": "{{user}} walks into the tavern.",
    "first_mes": "*wipes a glass* What'll it be?",
    "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Arr.",
    "creatorcomment": "Made for testing.",
    "avatar": "none",
    "talkativeness": "0.5",
    "fav": False,
    "tags": ["pirate"],
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "create_date": "2024-5-1 @12h 00m 00s 000ms",
    "data": {
        "name": "Captain Mira",
        "description": "A retired pirate captain who runs a tavern.",
        "personality": "gruff, kind",
        "scenario": "{{user}} walks into the tavern.",
        "first_mes": "*wipes a glass* What'll it be?",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Arr.",
        "creator_notes": "Made for testing.",
        "system_prompt": "You are {{char}}.",
        "post_history_instructions": "Stay in character.",
        "alternate_greetings": ["Ahoy.", "Back again?"],
        "tags": ["pirate"],
        "creator": "tester",
        "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "fav": False, "world": "", "depth_prompt": {"prompt": "", "depth": 4}},
        "character_book": {
            "name": "Tavern lore",
            "extensions": {},
            "entries": [{"keys": ["rum"], "content": "The rum is watered.", "extensions": {}, "enabled": True, "insertion_order": 100}],
        },
    },
}
