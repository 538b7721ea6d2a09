"""The e2e benchmark's quick form runs the whole path and prints the contract's JSON lines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_e2e_quick_prints_contract_lines():
    res = subprocess.run([sys.executable, "-m", "bench", "e2e", "--quick", "--json",
                          "--tools", "20", "--seconds", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    metrics = {r["metric"]: r for r in rows}
    assert {"events_to_redis_per_s", "event_to_redis_p99_ms", "tick_p99_ms",
            "rss_growth_mb"} <= set(metrics)
    for r in rows:
        assert set(r) == {"bench", "metric", "value", "unit", "baseline", "baseline_value",
                          "ratio"}
    # events flowed end to end: the probe saw what the farm had acknowledged
    assert metrics["events_to_redis_per_s"]["value"] > 0
