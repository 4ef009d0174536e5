"""Starting the web UI: the bind address rules, the background model load, the launch."""

from __future__ import annotations

import ipaddress
import sys

from core.errors import ChorusError
from core.runtime import Runtime, RuntimeOptions

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ChorusError("--auth must look like USER:PASS (both non-empty).")
    return [(user, password)]


def serve(args) -> int:
    auth = parse_auth(args.auth)
    if not is_loopback(args.host) and auth is None:
        raise ChorusError(
            f"Listening on {args.host} would let other machines reach your chats. "
            "Add --auth USER:PASS to require a login, or leave out --host to stay on 127.0.0.1."
        )
    runtime = Runtime(RuntimeOptions(model=args.model, max_resident_adapters=args.max_resident_adapters))
    runtime.load_in_background()
    from ui.page import build, launch_options

    demo = build(runtime)
    if auth:
        print(f"Chorus is listening on {args.host}:{args.port}; a login is required.", file=sys.stderr)
    demo.queue(default_concurrency_limit=8).launch(
        server_name=args.host, server_port=args.port, auth=auth, inbrowser=False, show_error=False,
        **launch_options(runtime),
    )
    return 0
