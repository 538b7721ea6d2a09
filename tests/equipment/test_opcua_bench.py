"""`python -m bench opcua --quick --json` runs and prints the contract's JSON lines."""

from __future__ import annotations

import json

from bench import opcua


def test_quick_opcua_bench_prints_ratios_against_the_bare_asyncua_client(capsys) -> None:
    assert opcua.main(["--quick", "--json", "--vars", "20", "--window", "0.5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["metric"] for r in rows] == ["datachange_to_spc_points_per_s",
                                           "datachange_to_spc_points_per_cpu_s"]
    for r in rows:
        assert r["bench"] == "opcua" and r["value"] > 0 and r["baseline_value"] > 0
        assert r["ratio"] == round(r["value"] / r["baseline_value"], 3)
