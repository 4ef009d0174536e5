"""Chorus: one local language model, many voices.

`python app.py` opens the web UI on 127.0.0.1; the subcommands work from the terminal.
This file parses the command line and hands off to core services or the UI; it holds no
model code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options every command takes. Subcommands repeat them with SUPPRESS defaults so that
    `app.py --model X chat ...` and `app.py chat ... --model X` both work."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=default(None), help="Hugging Face model id, local model folder or .gguf file (default: the model last chosen on the page, "
                        "kept in $CHORUS_HOME/model.json, else the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--data-dir", default=default(None), help="where Chorus keeps its data (default: $CHORUS_HOME or a per-user data folder)")
    common.add_argument("--max-resident-adapters", type=int, default=default(8), help="how many persona adapters stay loaded at once (default 8)")
    common.add_argument("--context-limit", type=int, default=default(None), help="tokens of context a reply sees (default 4096, "
                        "or less if the model has less); a shorter one needs less memory")
    common.add_argument("--engine", default=default(None), metavar="URL", help="generate on an OpenAI-compatible server (vLLM, "
                        "or another Chorus's serve) at URL instead of this machine; --model names the base model it serves (docs/scale-out.md)")
    common.add_argument("--engine-api-key", default=default(None), help="key the --engine server requires (or set CHORUS_ENGINE_API_KEY, "
                        "which `ps` does not show)")
    common.add_argument("--engine-adapter-dir", default=default(None), metavar="DIR", help="folder where persona adapters are "
                        "published for the --engine server; it must see the folder at the same path")
    return common


def _listening(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Where the server listens and the API's keys: on the page's command and on `serve`
    (SUPPRESS there, so `app.py --port N serve` and `app.py serve --port N` both work)."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--host", default=default("127.0.0.1"), help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=default(7860), help="port for the web UI and the API at /v1 (default 7860)")
    parser.add_argument("--api-key", default=default(None), help="key the API at /v1 requires (Authorization: Bearer KEY); "
                        "optional on 127.0.0.1, required on any other --host")
    parser.add_argument("--api-key-file", default=default(None), help="file of API keys, one a line, instead of or beside --api-key")


def build_parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Chorus: chat with personas that share one local language model.",
        parents=[_common(suppress=False)],
    )
    _listening(parser, suppress=False)
    parser.add_argument("--auth", default=None, help="USER:PASS required when --host is not a loopback address")
    parser.add_argument("--auth-file", default=None, help="file of user:pass lines (one login each), instead of or beside --auth")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="the OpenAI-compatible API at /v1 alone, without the page",
                       description="Serve the OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions) "
                       "without the web page; nothing is printed on stdout. Off this machine an API key is required. See docs/api.md.")
    _listening(p, suppress=True)
    p.add_argument("--allow-adapter-loading", default=None, metavar="DIR", help="take LoRA adapters at run time, as vLLM does "
                   "(POST /v1/load_lora_adapter, or a model name found as DIR/<name>/), from folders inside DIR only; off by default")

    p = sub.add_parser("personas", parents=[common], help="list personas")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("chat", parents=[common], help="send one message to a persona and print the reply (only the reply goes to stdout)")
    p.add_argument("persona", help="persona id or name")
    p.add_argument("message", help="your message")
    p.add_argument("--conversation", default=None, help="continue this conversation id")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--json", action="store_true", help="print one JSON object (conversation, persona, reply) instead of the streamed reply")

    p = sub.add_parser("inspect", parents=[common], help="read a chat export and say what is in it")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from core.chatimport.cli import add_inspect_options

    add_inspect_options(p)  # --sample SPEAKER [N], --keep BODY

    p = sub.add_parser("import", parents=[common], help="import a character card (.png, .json) or a persona bundle (.charx)")
    p.add_argument("file", help="the card or bundle to import")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("export", parents=[common], help="export a persona as a bundle (.charx), a PNG card or a V2 JSON card")
    p.add_argument("persona", help="persona id or name")
    p.add_argument("--out", required=True, help="file to write; the extension picks the format: .charx/.zip (with the adapter), .png, .json")

    p = sub.add_parser(
        "train", parents=[common], help="train a persona's voice from a chat export (QLoRA, in the background); list, follow, cancel or resume runs",
        description="Start a run with EXPORT --speaker NAME --persona NAME, or manage runs with one of --runs, --attach, --cancel, --resume. "
        "The run goes on if this terminal closes; running the same command again follows it. "
        "Exit codes when following a run: 0 finished, 1 failed, 3 cancelled, 130 Ctrl-C.",
    )
    p.add_argument("export", nargs="?", default=None, help="the chat export (any format `inspect` reads); needed to start a run")
    p.add_argument("--speaker", default=None, help="whose voice to learn: a speaker name as `inspect` lists it; needed to start a run")
    p.add_argument("--persona", default=None, help="persona to train: an existing one (id or name) gets a new adapter version, another name creates it; needed to start a run")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: chosen from the data)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16; alpha follows at 2x rank)")
    p.add_argument("--config", default=None, help='more training settings as JSON, e.g. \'{"learning_rate": 5e-4}\'')
    p.add_argument("--keep", action="append", default=[], metavar="BODY",
                   help="a message body that `inspect` set aside as a repeated placeholder but is the speaker's words: train on it (repeatable)")
    p.add_argument("--runs", action="store_true", help="list the training runs: state, progress, loss, ETA")
    p.add_argument("--attach", metavar="RUN", default=None, help="follow a run's progress until it ends (Ctrl-C stops watching, not the run)")
    p.add_argument("--cancel", metavar="RUN", default=None, help="stop a run after its current step (it can be resumed)")
    p.add_argument("--resume", metavar="RUN", default=None, help="continue a failed or cancelled run from its last checkpoint, and follow it")
    p.add_argument("--json", action="store_true", help="stdout is one JSON object (a list for --runs); progress goes to stderr")

    p = sub.add_parser("export-conversation", parents=[common], help="export a conversation as Markdown (.md) or OpenAI chat JSONL (.jsonl)")
    p.add_argument("conversation", help="conversation id")
    p.add_argument("--out", required=True, help="file to write: .md or .jsonl")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_personas(args) -> int:
    from storage.store import Store
    from core.starter import seed_starters

    store = Store()
    seed_starters(store)
    rows = []
    for p in store.personas.list():
        adapter = store.current_adapter(p)
        rows.append({"id": p["id"], "name": p["name"], "adapter": f"v{adapter['version']} ({adapter['folder']})" if adapter else None})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        width = max((len(r["id"]) for r in rows), default=2)
        for r in rows:
            print(f"{r['id']:<{width}}  {r['name']}  [{r['adapter'] or 'no adapter'}]")
    return 0


class _ReplyPrinter:
    """Streams a reply to stdout exactly as it is saved: stripped at both ends (the saved
    message is stripped), so `chat ... > reply.txt` holds the stored reply and a newline."""

    def __init__(self):
        self.started = False
        self.held = ""  # trailing whitespace, written only if more text follows

    def write(self, piece: str) -> None:
        text = self.held + piece
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        self.held = text[len(body):]
        if body:
            self.started = True
            sys.stdout.write(body)
            sys.stdout.flush()

    def end(self) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_chat(args) -> int:
    from core.engine import GenerationSettings
    from core.runtime import Runtime, RuntimeOptions, engine_options

    runtime = Runtime(RuntimeOptions(model=args.model, max_resident_adapters=args.max_resident_adapters,
                                     context_limit=args.context_limit, **engine_options(args)))
    persona = runtime.store.personas.find(args.persona)
    settings = GenerationSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.conversation:
        runtime.store.conversations.get(args.conversation)
    chat = runtime.load()  # its progress goes to stderr
    conv_id = args.conversation or chat.start_conversation(persona["id"])["id"]
    out = _ReplyPrinter()
    reply, labelled = "", False
    for event in chat.send(conv_id, persona["id"], args.message, settings):
        if event.kind == "delta" and not args.json:
            if not labelled:  # the speaker's name labels the reply for people; it is not the answer
                labelled = True
                print(f"\n{persona['name']}: ", end="", file=sys.stderr, flush=True)
            out.write(event.text)
        elif event.kind == "warning":
            print(f"[warning] {event.text}", file=sys.stderr)
        elif event.kind == "done":
            reply = event.text
    if args.json:
        print(json.dumps({"conversation": conv_id, "persona_id": persona["id"], "persona": persona["name"], "reply": reply},
                         ensure_ascii=False))
    else:
        out.end()
        print(f"(conversation {conv_id}; continue with --conversation {conv_id})", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from core.chatimport.cli import inspect_command

    return inspect_command(args.file, args.json, args.sample, args.keep)


def cmd_import(args) -> int:
    from core.cards.cli import import_command

    return import_command(args.file, args.json, args.model)


def cmd_export(args) -> int:
    from core.cards.cli import export_command

    return export_command(args.persona, args.out)


def cmd_export_conversation(args) -> int:
    from core.cards.cli import export_conversation_command

    return export_conversation_command(args.conversation, args.out)


def cmd_train(args) -> int:
    from core.training.cli import train_command

    return train_command(args)


def cmd_page(args) -> int:
    from ui.server import serve

    return serve(args)


def cmd_serve(args) -> int:
    from api.server import serve

    return serve(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir:
        os.environ["CHORUS_HOME"] = os.path.abspath(os.path.expanduser(args.data_dir))
    from core.errors import ChorusError

    if getattr(args, "model", None) is None:  # no --model: the one last chosen on the page, if any
        from core.model_catalog import remembered_model
        from storage.paths import chorus_home

        args.model = remembered_model(chorus_home())
        if args.model and args.command in (None, "chat", "train", "import", "serve"):
            print(f"Using {args.model}, the model last chosen on the page (--model overrides it).", file=sys.stderr)

    handlers = {
        "personas": cmd_personas,
        "chat": cmd_chat,
        "inspect": cmd_inspect,
        "import": cmd_import,
        "export": cmd_export,
        "export-conversation": cmd_export_conversation,
        "train": cmd_train,
        "serve": cmd_serve,
        None: cmd_page,
    }
    try:
        return handlers[args.command](args)
    except ChorusError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
