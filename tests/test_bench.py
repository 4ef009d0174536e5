"""bench/run.py end to end on the tiny model: it runs, and its exactness keys hold.

The figures themselves are not asserted (speed belongs to the benchmark, not to tests);
the keys that say whether the fast paths gave stock peft's tokens are."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_benchmark_runs_and_its_fast_paths_give_stock_peft_tokens(tiny_model_dir, chorus_home):
    args = ["--json", "--model", str(tiny_model_dir), "--switches", "10", "--cold-loads", "2", "--repeats", "1",
            "--decode-rounds", "2", "--group-rounds", "2", "--drift-switches", "20", "--decode-tokens", "6", "--group-tokens", "6"]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["tokens_match_peft"] == {"base": True, "adapter": True}
    assert result["group4_tokens_match_peft"] is True and result["group4_tokens_match_alone"] is True
    assert result["group4_lean_rows"] is True
    assert len(result["group4_speedup_rounds"]) == 2 and len(result["decode_ratio_rounds"]) == 2
    assert result["attention"] == "chorus_sdpa"
    for key in ("switch_resident_ms_p50", "adapter_cold_load_ms_p50", "decode_ratio", "group4_speedup",
                "group4_speedup_forward", "adapter_resident_over_file", "rss_drift_pct_1000_switches",
                "step_ms_base_512", "step_ms_base_512_sdpa"):
        assert isinstance(result[key], (int, float)) and result[key] == result[key], key  # a number, not NaN
