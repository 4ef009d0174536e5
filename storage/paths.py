"""Where Chorus keeps its data: one root folder, `$CHORUS_HOME` or a per-user data folder."""

import os
import sys
from pathlib import Path


def chorus_home() -> Path:
    """The data root. `CHORUS_HOME` wins, so tests and users can point it anywhere."""
    env = os.environ.get("CHORUS_HOME")
    if env:
        root = Path(env).expanduser()
    elif sys.platform == "win32":
        root = Path(os.environ.get("APPDATA", Path.home())) / "Chorus"
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support" / "Chorus"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "chorus"
    root.mkdir(parents=True, exist_ok=True)
    return root
