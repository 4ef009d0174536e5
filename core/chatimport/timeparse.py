"""Turning the many timestamp spellings of exporters into datetimes.

Unix times become aware UTC datetimes; written-out local times stay naive (the export
does not say their zone). Anything that cannot be read becomes None rather than an error:
a message with an unreadable time is still a message.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

# Exporters' own layouts, tried in order after ISO 8601.
_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d, %H:%M",
    "%d-%b-%y %I:%M %p",  # DiscordChatExporter (older default)
    "%m/%d/%Y %I:%M %p",  # DiscordChatExporter, en-US
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%b %d, %Y %I:%M:%S %p",  # imessage-exporter
    "%B %d, %Y %I:%M%p",  # SillyTavern ("July 12, 2023 5:34pm")
    "%B %d, %Y %I:%M %p",
    "%B %d, %Y %H:%M",
    "%b %d, %Y %I:%M %p",
)
_ST_AT = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2}) ?@(\d{1,2})h ?(\d{1,2})m(?: ?(\d{1,2})s)?")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def from_unix(value) -> datetime | None:
    """Seconds or milliseconds since 1970 (number or numeric string) as aware UTC."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if x > 1e11:  # milliseconds
        x /= 1000.0
    try:
        return datetime.fromtimestamp(x, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def parse_loose(text) -> datetime | None:
    """Best effort for a timestamp string of unknown layout."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return from_unix(text)
    s = " ".join(str(text).replace("\u202f", " ").replace("\u00a0", " ").split())
    if not s:
        return None
    if s.isdigit():
        return from_unix(s)
    iso = _FRACTION.sub(r"\1", s.replace("Z", "+00:00") if s.endswith("Z") else s)
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        pass
    m = _ST_AT.match(s)
    if m:
        y, mo, d, h, mi, sec = (int(g) if g else 0 for g in m.groups())
        try:
            return datetime(y, mo, d, h, mi, sec)
        except ValueError:
            return None
    for fmt in _FORMATS:
        try:
            return datetime.strptime(s, fmt)
        except ValueError:
            continue
    return None
