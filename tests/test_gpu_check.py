"""bench/gpu_check.py: without CUDA it says so in one JSON object and exits 0; its stages
run end to end (rehearsed on the CPU with the tiny model, since no GPU is lent here)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = str(ROOT / "bench" / "gpu_check.py")


def test_without_cuda_it_prints_one_json_object_saying_so_and_exits_0(chorus_home):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # the whole of stdout is one object
    assert result["cuda"] is False and "no CUDA device" in result["skipped"]


def test_every_stage_passes_when_rehearsed_on_the_cpu(tiny_model_dir, chorus_home):
    """Engine load, replies with and without an adapter, switches, a group, a training run
    whose loss goes down, the hot-load of its adapter: the script's own code, on the CPU."""
    args = ["--rehearse-on-cpu", "--model", str(tiny_model_dir), "--steps", "4", "--messages", "120", "--tokens", "6",
            "--train-config", json.dumps({"batch_size": 2, "max_seq_len": 64, "max_eval_examples": 4, "learning_rate": 0.01}),
            "--skip-bench"]  # tests/test_bench.py runs the bench and checks the keys this script copies
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CHORUS_HOME": str(chorus_home)})
    result = json.loads(done.stdout)
    assert result["failed"] == [], json.dumps(result["checks"], indent=1)[-3000:]
    assert done.returncode == 0 and result["ok"] is True and result["device"] == "cpu"
    assert list(result["checks"]) == ["engine_load", "reply_without_adapter", "persona_switch", "reply_with_adapter",
                                      "group", "training", "hot_load"]
    load = result["checks"]["engine_load"]  # the memory estimate the loader checked, against the footprint
    assert load["ok_estimate_covers_footprint"] and load["estimate_total_mb"] > load["estimate_weights_mb"] >= load["footprint_mb"]
    training = result["checks"]["training"]
    assert training["ok_train_loss_down"] and training["ok_heldout_loss_down"] and training["steps"] == 4
