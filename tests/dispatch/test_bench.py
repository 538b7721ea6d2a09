"""`python -m bench dispatch --quick --json` runs and prints the contract's lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dispatch.scorer import warm

ROOT = Path(__file__).resolve().parents[2]


def test_warm_compiles_every_kernel():
    warm()   # the daemon calls this before READY; a second call is instant (cached)


def test_quick_bench_prints_one_json_line_per_metric():
    proc = subprocess.run([sys.executable, "-m", "bench", "dispatch", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    metrics = {r["metric"]: r for r in rows}
    assert {"bench", "metric", "value", "unit", "baseline", "baseline_value", "ratio"} <= set(rows[0])
    # the HVLM re-score was checked against the Python reference in the same run
    hvlm = metrics["hvlm_full_rescore_ms"]
    assert hvlm["baseline"] == "python_reference_ms" and hvlm["value"] > 0
    assert "hvlm10x_full_rescore_ms_vs_hvlm" in metrics
    assert "[bench]" in proc.stderr   # progress goes to stderr, not into the JSON
