"""Big exports are streamed: peak memory stays far below the file size, and progress is reported.

Each import runs in a fresh interpreter and reads its own peak RSS (VmHWM; ru_maxrss would
include the forked pytest process on Linux); the baseline is that interpreter after the
package import.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024

_PROBE = r"""
import json, resource, sys
from core.chatimport import load_export
def peak_kb():
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
calls = []
if sys.argv[1] == "-":
    print(json.dumps({"rss": peak_kb()}))
    raise SystemExit
r = load_export(sys.argv[1], progress=lambda done, total: calls.append((done, total)))
print(json.dumps({"rss": peak_kb(), "messages": r.message_count,
                  "speakers": r.speakers, "skipped": r.skipped, "last": r.last.isoformat(),
                  "calls": len(calls), "final": calls[-1], "monotonic": all(a[0] <= b[0] for a, b in zip(calls, calls[1:])),
                  "lazy": type(r.conversations[0].messages).__name__}))
"""


def probe(arg) -> dict:
    p = subprocess.run([sys.executable, "-c", _PROBE, str(arg)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def write_whatsapp(path: Path, target: int) -> tuple[int, int]:
    """Android-style lines, day-first, every tenth message with a continuation line."""
    names = ["Anna", "Ben", "Zoë 👩‍👩‍👧", "Jean-Luc"]
    n = size = day = 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target:
            d, mo, y = 1 + day % 28, 1 + (day // 28) % 12, 2000 + day // 336
            lines = []
            for i in range(1000):
                h, mi = divmod(i % 1440, 60)
                line = f"{d:02d}/{mo:02d}/{y}, {h:02d}:{mi:02d} - {names[i % 4]}: message {n} with some words in it\n"
                if i % 10 == 0:
                    line += "and a second line\n"
                if i == 500:
                    line = f"{d:02d}/{mo:02d}/{y}, {h:02d}:{mi:02d} - {names[i % 4]}: <Media omitted>\n"
                lines.append(line)
                n += 1
            chunk = "".join(lines)
            fh.write(chunk)
            size += len(chunk.encode())
            day += 1
    return n, day


def test_large_whatsapp_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "big_chat.txt"
    n, days = write_whatsapp(path, 55 * MB)
    size = path.stat().st_size
    base = probe("-")["rss"]
    out = probe(path)
    assert out["messages"] == n
    assert sum(out["speakers"].values()) == n - days and out["skipped"] == {"media": days}
    assert out["lazy"] == "LazyMessages"
    grown = (out["rss"] - base) * 1024
    assert grown < 40 * MB, f"peak grew {grown / MB:.0f} MB for a {size / MB:.0f} MB file"
    print(f"whatsapp: {size / MB:.0f} MB file, peak grew {grown / MB:.1f} MB")
    assert out["final"] == [size, size] and out["monotonic"] and 10 <= out["calls"] <= 400


def test_large_telegram_json_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "result.json"
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{\n "name": "Big", "type": "personal_chat", "id": 1,\n "messages": [\n')
        while fh.tell() < 40 * MB:
            rows = []
            for _ in range(1000):
                m = {"id": n, "type": "message", "date": f"2023-01-01T10:{(n // 60) % 60:02d}:{n % 60:02d}",
                     "from": "Anna" if n % 2 else "Ben", "from_id": f"user{n % 2}",
                     "text": ["message ", {"type": "bold", "text": f"number {n}"}, " with words"]}
                rows.append(("" if n == 0 else ",\n") + json.dumps(m))
                n += 1
            fh.write("".join(rows))
        fh.write("\n ]\n}\n")
    base = probe("-")["rss"]
    out = probe(path)
    assert out["messages"] == n and out["speakers"] == {"Anna": n // 2, "Ben": n // 2}
    grown = (out["rss"] - base) * 1024
    assert grown < 40 * MB, f"peak grew {grown / MB:.0f} MB for a {path.stat().st_size / MB:.0f} MB file"


def test_lazy_conversation_reads_again(tmp_path, monkeypatch):
    from core.chatimport import build_examples, load_export
    from core.chatimport import loader

    monkeypatch.setattr(loader, "LAZY_BYTES", 0)  # force the large-file path on a small file
    path = tmp_path / "chat.txt"
    write_whatsapp(path, 200_000)
    r = load_export(path)
    conv = r.conversations[0]
    assert len(conv.messages) == r.message_count == sum(1 for _ in conv.messages)
    assert conv.messages[3].text == "message 3 with some words in it"
    ex = build_examples(r, "anna", val_fraction=0.1)
    assert ex.report["assistant_turns"] > 0 and ex.validation
