"""Running an ASGI app with uvicorn on a socket bound here, and `python app.py serve`:
the API alone, no page.

The socket is bound before uvicorn starts, so a busy port or a bad address is one clear
message instead of a log line. uvicorn's own logging stays at warnings on stderr and its
access log is off: stdout carries nothing, and no request line (nor any key) is logged.
"""

from __future__ import annotations

import socket
import sys

from api.auth import ApiKeys
from core.errors import ChorusError


def bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ChorusError(f"Cannot listen on {host}: {exc.strerror}. Give an address such as 127.0.0.1 or 0.0.0.0.") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ChorusError(f"Cannot listen on {host}:{port}: {exc.strerror}. Is Chorus already running? "
                          "Pick another --port.") from None
    # Not listening yet: asyncio's server calls listen() once uvicorn starts, so nothing
    # connects before the start message is printed and the app is ready to answer.
    return sock


def run(app, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def api_message(host: str, port: int, keys: ApiKeys) -> str:
    where = f"http://{host}:{port}/v1"
    if keys.count:
        return f"The OpenAI-compatible API is at {where}; an API key is required ({keys.count} key{'s' if keys.count > 1 else ''})."
    if keys.open:
        return f"The OpenAI-compatible API is at {where} (this machine only; no key)."
    return f"The API at {where} is off: this address is reachable from other machines and no --api-key was given."


def require_key_off_loopback(host: str, keys: ApiKeys) -> None:
    if not keys.loopback and not keys.count:
        raise ChorusError(
            f"Listening on {host} would let other machines use your personas. "
            "Add --api-key KEY or --api-key-file FILE (one key a line) to require a key, or leave out --host to stay on 127.0.0.1."
        )


def serve(args) -> int:
    """`python app.py serve`: the API only, the model loading in the background."""
    keys = ApiKeys.from_args(args)
    require_key_off_loopback(args.host, keys)
    sock = bind(args.host, args.port)
    from api.app import create_app
    from core.runtime import Runtime, RuntimeOptions, engine_options

    adapters = None
    if getattr(args, "allow_adapter_loading", None):
        from core.served_adapters import ServedAdapters

        adapters = ServedAdapters(args.allow_adapter_loading)
    runtime = Runtime(RuntimeOptions(model=args.model, max_resident_adapters=args.max_resident_adapters,
                                     context_limit=args.context_limit, **engine_options(args)))
    runtime.load_in_background()
    runtime.watch_training()
    app = create_app(runtime, keys, adapters)
    loading = f" Adapters load at run time from {adapters.root} only." if adapters else ""
    print(f"Chorus is listening on http://{args.host}:{args.port}/ (API only, no page). {api_message(args.host, args.port, keys)}{loading}",
          file=sys.stderr, flush=True)
    run(app, sock)
    return 0
