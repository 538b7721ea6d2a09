"""`python -m bench mqtt --quick --json` runs against its own mosquitto and prints a ratio."""

from __future__ import annotations

import json

from bench import mqtt


def test_quick_mqtt_bench_prints_a_ratio_against_the_bare_aiomqtt_loop(capsys) -> None:
    assert mqtt.main(["--quick", "--json", "--messages", "1000"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["bench"] == "mqtt" and row["metric"] == "messages_to_spc_points_per_s"
    assert row["value"] > 0 and row["baseline_value"] > 0 and row["ratio"] > 0
