"""The worker's peak RSS is its own, not the peak of the process that started it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = "from core.training import memory; memory.reset_peak(); print(memory.peak_rss_mb())"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_child_of_a_big_process_reports_its_own_peak():
    ballast = bytearray(600 << 20)  # the parent: 600 MB resident, as the serving app holds a model
    ballast[::4096] = b"x" * len(ballast[::4096])
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True)
    child_peak = float(out.stdout)
    assert 0 < child_peak < 300, child_peak  # the interpreter alone; ru_maxrss would say 600+
    del ballast
