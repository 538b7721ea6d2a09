"""Every benchmark line's ratio reads the same way: above 1, fabd did better (run on dispatch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dispatch_durations_have_ratio_baseline_over_value() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "dispatch", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    for r in rows:
        if r["unit"] in ("ms", "us"):   # lower is better: the reference's time over ours
            assert r["ratio"] == pytest.approx(r["baseline_value"] / r["value"], rel=1e-2, abs=1e-3), r
        else:
            assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"], rel=1e-2, abs=1e-3), r
