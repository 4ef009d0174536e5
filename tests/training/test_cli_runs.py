"""Training from the terminal (issue 18, item 9): `train --runs`, `--attach`, `--cancel`,
`--resume`, and the same train command attaching to its run instead of refusing.

Real worker processes on the tiny model. Followers run as `python app.py` subprocesses
with stdout and stderr in files, so the tests also see that stdout holds only the answer.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from app import main
from tests.training.conftest import SHAREGPT, tiny_config, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """`python app.py ARGS` in the background, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, name: str, *args: str):
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=dict(os.environ),
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def shows_a_step(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited early ({self.proc.returncode}): {self.stderr()}")
        return "  step " in self.stderr()

    def finish(self, timeout=180) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _start_args(tiny_model_dir, steps: int) -> list[str]:
    config = json.dumps(tiny_config(max_steps=steps, save_every=5, samples=0))
    return [str(SHAREGPT), "--speaker", "gpt", "--persona", "Wren", "--model", str(tiny_model_dir), "--config", config]


def test_train_needs_its_arguments_or_one_action(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EXPORT, --speaker and --persona" in err and "--runs" in err
    assert main(["train", "--runs", "--cancel", "20260101-abcdef12"]) == 2
    assert "one of --runs, --attach, --cancel, --resume" in capsys.readouterr().err
    assert main(["train", str(SHAREGPT), "--runs"]) == 2
    assert "takes no EXPORT" in capsys.readouterr().err
    assert main(["train", "--attach", "20260101-nothere"]) == 2
    captured = capsys.readouterr()
    assert "no training run '20260101-nothere'" in captured.err and captured.out == ""


def test_runs_lists_nothing_then_a_run(service, capsys):
    assert main(["train", "--runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    run_id = service.start(SHAREGPT, "gpt", persona_name="Wren", consent=True, config=tiny_config(max_steps=400, save_every=5))
    try:
        wait_for(lambda: service.status(run_id)["step"] >= 1, what="step 1")
        assert main(["train", "--runs"]) == 0
        out = capsys.readouterr().out
        header, row = out.splitlines()
        assert header.split()[:3] == ["RUN", "STATE", "PROGRESS"]
        assert row.split()[:2] == [run_id, "running"] and "/400 (" in row and "gpt -> Wren" in row
        assert main(["train", "--runs", "--json"]) == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert listed["id"] == run_id and listed["state"] == "running" and listed["total_steps"] == 400
        assert listed["step"] >= 1 and listed["persona_name"] == "Wren" and listed["resumable"] is False
    finally:
        service.cancel(run_id)
        service.wait(run_id, timeout=120)


def test_same_command_and_attach_follow_the_run_and_cancel_ends_them(service, tmp_path, tiny_model_dir, capsys):
    """A run started elsewhere (as if by a terminal that died); the same train command
    again, `--attach` and a second `--attach` that is interrupted all follow it;
    `--cancel` stops it, and each follower exits with the cancelled state's code."""
    steps = 400
    run_id = service.start(SHAREGPT, "gpt", persona_name="Wren", consent=True,
                           config=tiny_config(max_steps=steps, save_every=5, samples=0))
    again = Cli(tmp_path, "again", "train", *_start_args(tiny_model_dir, steps), "--json")
    attach = Cli(tmp_path, "attach", "train", "--attach", run_id, "--json")
    watcher = Cli(tmp_path, "watcher", "train", "--attach", run_id)
    try:
        for cli in (again, attach, watcher):
            wait_for(cli.shows_a_step, what="a follower to print a step")
        # Ctrl-C under --attach only stops watching: the run goes on
        watcher.proc.send_signal(signal.SIGINT)
        assert watcher.finish(60) == 130
        assert f"run {run_id} goes on" in watcher.stderr() and watcher.stdout() == ""
        assert service.status(run_id)["state"] == "running"

        assert main(["train", "--cancel", run_id]) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith(f"Cancelled run {run_id} at step ") and f"--resume {run_id}" in captured.out
        assert "Cancelling" in captured.err
        assert service.status(run_id)["state"] == "cancelled"

        assert again.finish() == 3 and attach.finish() == 3
    finally:
        for cli in (again, attach, watcher):
            if cli.proc.poll() is None:
                cli.proc.kill()
    assert f"already going as run {run_id}" in again.stderr()
    for cli in (again, attach):
        result = json.loads(cli.stdout())  # stdout is exactly one JSON object, progress is on stderr
        assert result["id"] == run_id and result["state"] == "cancelled" and result["resumable"]
        assert "  step " in cli.stderr() and "error: training cancelled" in cli.stderr()
    assert [r["id"] for r in service.runs()] == [run_id]  # the same command started no second run

    # a cancelled run cannot be cancelled again; it can be resumed
    assert main(["train", "--cancel", run_id]) == 2
    assert "only a queued or running run can be cancelled" in capsys.readouterr().err


def test_resume_continues_a_cancelled_run_to_the_end(service, store, capsys):
    steps = 30  # enough that a cancel right after checkpoint-5 lands well before the end
    run_id = service.start(SHAREGPT, "gpt", persona_name="Wren", consent=True,
                           config=tiny_config(max_steps=steps, save_every=5, samples=0))
    ckpts = store.home / "training" / run_id / "checkpoints"
    wait_for(lambda: (ckpts / "checkpoint-5" / "chorus_complete").is_file(), what="the first checkpoint")
    assert main(["train", "--cancel", run_id, "--json"]) == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert cancelled["state"] == "cancelled" and 5 <= cancelled["step"] < steps

    assert main(["train", "--resume", run_id, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["run_id"] == run_id and result["steps"] == steps and result["persona_id"] == "wren"
    assert "Resuming run" in captured.err and "  step " in captured.err
    st = service.status(run_id)
    assert st["state"] == "finished" and st["result"]["resumed_from"] >= 5

    # --attach on a finished run prints its result; --resume of a finished run is refused
    assert main(["train", "--attach", run_id]) == 0
    assert "now uses adapter v1" in capsys.readouterr().out
    assert main(["train", "--resume", run_id]) == 2
    assert "can be resumed" in capsys.readouterr().err


def test_a_different_command_while_a_run_goes_names_the_ways_out(service, tiny_model_dir, capsys):
    run_id = service.start(SHAREGPT, "gpt", persona_name="Wren", consent=True, config=tiny_config(max_steps=400))
    try:
        args = _start_args(tiny_model_dir, 4)
        args[args.index("gpt")] = "human"  # another speaker: another request, so no attaching
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err
        assert "still going" in err and f"--attach {run_id}" in err and f"--cancel {run_id}" in err
    finally:
        service.cancel(run_id)
        service.wait(run_id, timeout=120)
