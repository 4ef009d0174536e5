"""Starting the training process and telling whether it still lives.

The worker runs as `python -m core.training.worker RUN_ID` in its own session (so a
Ctrl-C in the app's terminal does not reach it, and it cannot take the app down), with
stdout and stderr in `<run folder>/worker.log`. A run whose recorded pid is no longer a
live worker for that run was killed or crashed: the service marks it failed and
resumable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
FAULT_ENV = "CHORUS_TRAINING_FAULT"


def fault_point(name: str, step: int | None = None) -> None:
    """Crash tests: kill -9 this process at a named point of a save, so the tests can prove
    what a kill at exactly that moment leaves behind. Set CHORUS_TRAINING_FAULT to the
    name, or to name@step for one step; unset, this does nothing."""
    want = os.environ.get(FAULT_ENV)
    if want and want in (name, f"{name}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


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
