"""Who may call the API: bearer keys from `--api-key` and `--api-key-file`, and the bind rule.

On a loopback address the API is open unless a key is given (then the key is required);
on any other address it needs a key, also when the page has logins. Keys are compared in
constant time and never printed or logged: messages say how many there are, not what.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from core.errors import ChorusError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_key_file(path: str | None) -> list[str]:
    """Keys from a file, one a line (blank lines and `#` comments skipped)."""
    if not path:
        return []
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChorusError(f"The --api-key-file {path} cannot be read ({getattr(exc, 'strerror', None) or exc}).") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ChorusError(f"The --api-key-file {path} holds no key (one key a line).")
    for n, key in enumerate(keys, 1):
        if any(c.isspace() for c in key):
            raise ChorusError(f"Key {n} of the --api-key-file {path} contains a space; a key is one word a line.")
    return keys


class ApiKeys:
    """The keys the API accepts, and whether it may be used without one."""

    def __init__(self, keys: list[str], loopback: bool):
        self._keys = [k.encode("utf-8") for k in keys]
        self.loopback = loopback

    @classmethod
    def from_args(cls, args) -> "ApiKeys":
        keys = []
        key = getattr(args, "api_key", None)
        if key is not None:
            if not key.strip() or any(c.isspace() for c in key.strip()):
                raise ChorusError("--api-key must be one word (no spaces), for example a long random string.")
            keys.append(key.strip())
        keys += read_key_file(getattr(args, "api_key_file", None))
        return cls(keys, is_loopback(args.host))

    @property
    def count(self) -> int:
        return len(self._keys)

    @property
    def open(self) -> bool:
        """No key needed: on this machine only, with none given."""
        return not self._keys and self.loopback

    def check(self, authorization: str | None) -> str | None:
        """None when the request may go on, else why not (for a 401)."""
        if self.open:
            return None
        if not self._keys:
            return ("This Chorus listens beyond this machine and has no API key, so its API is off. "
                    "Start it with --api-key KEY or --api-key-file FILE.")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "An API key is required: send it as 'Authorization: Bearer KEY'."
        given = token.strip().encode("utf-8")
        ok = False
        for key in self._keys:  # every key is compared, so the time says nothing about which matched
            ok |= hmac.compare_digest(given, key)
        return None if ok else "The API key is not valid."
