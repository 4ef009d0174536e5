"""Starting the training process and telling whether it still lives.

The worker runs as `python -m core.training.worker RUN_ID` in its own session (so a
Ctrl-C in the app's terminal does not reach it, and it cannot take the app down), with
stdout and stderr in `<run folder>/worker.log`. A run whose recorded pid is no longer a
live worker for that run was killed or crashed: the service marks it failed and
resumable. Before the worker's pid is recorded (the export is still being copied), a
queued run lives while the process that queued it does (`owner_alive`).

Tests reach exact moments through two environment variables: CHORUS_TRAINING_FAULT
kills the worker at a named save point, CHORUS_TRAINING_HOLD holds it at a named stage
until the run is cancelled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
FAULT_ENV = "CHORUS_TRAINING_FAULT"
HOLD_ENV = "CHORUS_TRAINING_HOLD"
# A queued run with no worker yet is alive for at most this long while its owner lives
# (copying a 2 GB export takes well under it); past it the start is taken as lost.
OWNER_GRACE_S = 30 * 60


def fault_point(name: str, step: int | None = None) -> None:
    """Crash tests: kill -9 this process at a named point of a save, so the tests can prove
    what a kill at exactly that moment leaves behind. Set CHORUS_TRAINING_FAULT to the
    name, or to name@step for one step; unset, this does nothing."""
    want = os.environ.get(FAULT_ENV)
    if want and want in (name, f"{name}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def hold_point(name: str, released, timeout_s: float = 120.0) -> None:
    """Stage tests: wait at the stage `name` until `released()` (the run was cancelled),
    so a test can act at exactly that stage. Set CHORUS_TRAINING_HOLD to the stage's
    name; unset, this does nothing."""
    if os.environ.get(HOLD_ENV) != name:
        return
    print(f"holding at {name}", flush=True)
    deadline = time.monotonic() + timeout_s
    while not released() and time.monotonic() < deadline:
        time.sleep(0.05)


def owner_alive(row: dict, grace_s: float = OWNER_GRACE_S) -> bool:
    """True if the process that queued this run (`owner_host`, `owner_pid`, `owned_since`)
    still lives and queued it recently: it is copying the export or starting the worker."""
    pid, since = row.get("owner_pid"), row.get("owned_since")
    if not pid or not since:
        return False
    try:
        since_s = datetime.fromisoformat(since).timestamp()
    except ValueError:
        return False
    if time.time() - since_s > grace_s:
        return False
    if row.get("owner_host") != socket.gethostname():
        return True  # another machine sharing this folder: it cannot be looked at, trust it while young
    import psutil

    try:
        proc = psutil.Process(int(pid))
        # a pid reused by a process started after the run was queued is not its owner
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since_s + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def spawn_worker(run_id: str, home: Path, run_dir: Path, python: str | None = None) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(CHORUS_HOME=str(home), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with open(run_dir / "worker.log", "ab") as log:
        return subprocess.Popen(
            [python or sys.executable, "-m", "core.training.worker", run_id],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def worker_alive(pid: int | None, run_id: str) -> bool:
    """True if `pid` is a running (not zombie) worker process for `run_id`."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return "core.training.worker" in cmd and run_id in cmd


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log file, for error messages."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
