"""`python -m bench hsms --quick --json` runs end to end and prints the contract's lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_hsms_bench_quick_holds_every_session_and_reports_against_secsgem() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "hsms", "--quick", "--json"],
                         capture_output=True, text=True, timeout=240, check=True)
    rows = {r["metric"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"s6f11_per_host_cpu_s", "s6f11_rate", "s6f11_ack_p99_ms",
                         "sessions_selected"}
    assert rows["sessions_selected"]["value"] == rows["sessions_selected"]["baseline_value"] == 50
    assert rows["s6f11_rate"]["value"] > 0 and rows["s6f11_per_host_cpu_s"]["baseline_value"] > 0
    assert all(r["bench"] == "hsms" and r["ratio"] is not None for r in rows.values())
    # a latency: a ratio above 1 means fabd acknowledged faster than the secsgem pair
    p99 = rows["s6f11_ack_p99_ms"]
    assert p99["ratio"] == pytest.approx(p99["baseline_value"] / p99["value"], rel=1e-2)
