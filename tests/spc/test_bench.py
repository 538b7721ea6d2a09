"""`python -m bench spc --quick --json` prints the contract's lines."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_spc_quick_prints_contract_lines():
    proc = subprocess.run([sys.executable, "-m", "bench", "spc", "--quick", "--json"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["metric"] for r in rows] == ["kernel_points_per_s_10000_charts_8_tests",
                                           "engine_evaluate_points_per_s_10000_charts",
                                           "kernel_points_per_s_10000_charts_vs_same_code_cpython"]
    for r in rows:
        assert set(r) == {"bench", "metric", "value", "unit", "baseline", "baseline_value", "ratio"}
        assert r["bench"] == "spc" and r["unit"] == "points/s"
        assert r["value"] > 0 and r["baseline_value"] > 0 and r["ratio"] > 0
