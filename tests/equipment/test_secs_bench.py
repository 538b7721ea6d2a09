"""`python -m bench secs_codec --quick --json` compares our codec with secsgem in one run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_secs_codec_bench_quick_prints_ratios_against_secsgem() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "secs_codec", "--quick", "--json"],
                         capture_output=True, text=True, timeout=240, check=True)
    rows = {r["metric"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"s6f11_decode_rate", "s6f11_encode_rate", "recipe_1mib_decode_rate",
                         "recipe_1mib_encode_rate"}
    assert all(r["value"] > 0 and r["baseline_value"] > 0 for r in rows.values())
    # how much faster is the benchmark's answer, not this test's: tests never fail on timing
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"], rel=1e-2)
