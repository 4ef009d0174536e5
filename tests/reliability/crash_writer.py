"""A stand-in for the app under kill -9: writes conversations and adapter versions through
the store and, with a model, streams long replies through ChatService, printing each
item's id once it is committed (flushed), so the test knows what must survive.

    python -m tests.reliability.crash_writer HOME ADAPTER_DIR [MODEL_DIR]
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

from storage.store import Store

_print_lock = threading.Lock()


def say(*parts) -> None:
    with _print_lock:
        print(*parts, flush=True)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_conversations(store: Store, adapter: Path) -> None:
    n = 0
    while True:
        conv = store.conversations.create(f"crash {n}")
        parent = None
        for i in range(3):
            text = f"conversation {n} message {i} " + "lorem ipsum " * (i * 20)
            msg = store.conversations.add_message(conv["id"], "user" if i % 2 == 0 else "assistant", text, parent_id=parent)
            parent = msg["id"]
            say("MSG", msg["id"], digest(text))
        if n % 10 == 0:
            row = store.adapters.add_version("keeper", adapter, {"rank": 4, "alpha": 8, "base_model": "tiny-llama"})
            say("ADAPTER", row["id"], row["sha256"])
        n += 1
        time.sleep(0.02)  # a busy user, not a benchmark: leaves the CPU to the streamed reply


def stream_replies(store: Store, model: Path) -> None:
    from core.chat import ChatService
    from core.engine import Engine, GenerationSettings
    from core.model_source import ModelSource
    from core.logs import quiet_libraries

    quiet_libraries()
    chat = ChatService(store, Engine.load(ModelSource("tiny-llama", model), max_resident=2))
    say("READY")
    conv = chat.start_conversation("keeper")["id"]
    k = 0
    while True:
        settings = GenerationSettings(temperature=0.9, max_new_tokens=200, min_new_tokens=200, seed=k)
        stream = chat.send(conv, "keeper", f"Tell me a long story, part {k}.", settings)
        say("USER", store.conversations.path(conv)[-1]["id"])
        first = True
        for event in stream:
            if event.kind == "delta" and first:
                say("DELTA", k)
                first = False
            elif event.kind == "done":
                say("REPLY", event.message["id"], digest(event.message["content"]))
        k += 1


def main(home: str, adapter: str, model: str | None = None) -> None:
    store = Store(Path(home))
    if not any(p["id"] == "keeper" for p in store.personas.list()):
        store.personas.create({"name": "Keeper", "greeting": "Hello."}, persona_id="keeper")
    if model:
        threading.Thread(target=stream_replies, args=(store, Path(model)), daemon=True).start()
    say("STARTED")
    write_conversations(store, Path(adapter))


if __name__ == "__main__":
    main(*sys.argv[1:])
    time.sleep(3600)
