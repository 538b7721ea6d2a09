"""The contract's JSON line: its keys, and a ratio above 1 always meaning fabd did better."""

from __future__ import annotations

import json

import pytest

from bench.common import emit

KEYS = {"bench", "metric", "value", "unit", "baseline", "baseline_value", "ratio"}


def test_a_rate_twice_the_baseline_has_ratio_two(capsys) -> None:
    row = emit("x", "events_per_s", 200.0, "1/s", "base", 100.0)
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) == row and set(row) == KEYS
    assert row["ratio"] == 2.0


def test_a_duration_half_the_baseline_has_ratio_two_not_one_half(capsys) -> None:
    row = emit("x", "rescore_ms", 50.0, "ms", "reference_ms", 100.0, lower_is_better=True)
    assert json.loads(capsys.readouterr().out) == row
    assert row["ratio"] == 2.0   # fabd takes half the time: better, so above 1
    worse = emit("x", "p99_ms", 300.0, "ms", "reference_ms", 100.0, lower_is_better=True)
    assert worse["ratio"] == pytest.approx(1 / 3, abs=1e-3)


def test_a_ratio_that_cannot_be_formed_is_null(capsys) -> None:
    assert emit("x", "rate", 5.0, "1/s", "base", 0.0)["ratio"] is None
    assert emit("x", "growth_mb", 0.0, "MB", "start_mb", 80.0, lower_is_better=True)["ratio"] is None
    assert emit("x", "growth_mb", -1.0, "MB", "start_mb", 80.0, lower_is_better=True)["ratio"] is None
