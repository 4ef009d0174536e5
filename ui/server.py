"""Starting the web UI with the API beside it: the bind address rules, the background
model load, one server for both.

This is the launcher that wires the two faces (neither imports the other): the page is a
Gradio app mounted at `/` on the API's FastAPI app, whose `/v1` routes come first. The
page's logins (--auth, --auth-file) guard the page only; the API has its own keys
(api/auth.py): off localhost it needs one, also when the page has logins.
"""

from __future__ import annotations

import sys
from pathlib import Path

from api.auth import ApiKeys, is_loopback
from core.errors import ChorusError
from core.runtime import Runtime, RuntimeOptions, engine_options

__all__ = ["is_loopback", "logins", "serve", "start_message"]


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ChorusError("--auth must look like USER:PASS (both non-empty).")
    return [(user, password)]


def read_auth_file(path: str | None) -> list[tuple[str, str]] | None:
    """Logins from a file of `user:pass` lines (blank lines and `#` comments skipped)."""
    if not path:
        return None
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChorusError(f"The --auth-file {path} cannot be read ({getattr(exc, 'strerror', None) or exc}).") from None
    logins = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ChorusError(f"Line {n} of the --auth-file {path} must look like user:pass (both non-empty).")
        logins.append((user, password))
    if not logins:
        raise ChorusError(f"The --auth-file {path} holds no user:pass line.")
    return logins


def logins(args) -> list[tuple[str, str]] | None:
    """Every login from --auth and --auth-file together (None: no login required)."""
    found = (parse_auth(args.auth) or []) + (read_auth_file(getattr(args, "auth_file", None)) or [])
    return found or None


def start_message(host: str, port: int, auth) -> str:
    where = f"http://{host}:{port}/"
    if auth:
        return f"Chorus is listening on {where}; a login is required ({len(auth)} user{'s' if len(auth) > 1 else ''})."
    return f"Chorus is listening on {where} (this machine only; no login)."


def serve(args) -> int:
    auth = logins(args)
    if not is_loopback(args.host) and auth is None:
        raise ChorusError(
            f"Listening on {args.host} would let other machines reach your chats. "
            "Add --auth USER:PASS or --auth-file PATH to require a login, or leave out --host to stay on 127.0.0.1."
        )
    keys = ApiKeys.from_args(args)
    from api import server as api_server

    sock = api_server.bind(args.host, args.port)
    runtime = Runtime(RuntimeOptions(model=args.model, max_resident_adapters=args.max_resident_adapters,
                                     context_limit=getattr(args, "context_limit", None), **engine_options(args)))
    runtime.load_in_background()
    runtime.watch_training()
    import gradio as gr

    from api.app import create_app
    from ui.page import build, launch_options

    demo = build(runtime)
    demo.queue(default_concurrency_limit=8)
    app = create_app(runtime, keys)  # its /v1 routes are matched before the page's mount at /
    gr.mount_gradio_app(app, demo, path="/", server_name=args.host, server_port=args.port, auth=auth,
                        show_error=False, **launch_options(runtime))
    print(f"{start_message(args.host, args.port, auth)} {api_server.api_message(args.host, args.port, keys)}",
          file=sys.stderr, flush=True)
    api_server.run(app, sock)
    return 0
