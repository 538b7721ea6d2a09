"""`fabd schema`: the JSON Schema names every published event and every ERP command."""

from __future__ import annotations

import json
import subprocess
import sys

from daemon import events as ev


def test_schema_lists_every_event_and_command_with_their_fields() -> None:
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "schema", "--compact"],
                         capture_output=True, text=True, timeout=60, check=True)
    schema = json.loads(out.stdout)
    assert schema["version"] == ev.SCHEMA_VERSION
    assert set(schema["events"]) >= {
        "lot_created", "lot_tracked_in", "lot_tracked_out", "lot_moved", "lot_held",
        "lot_released", "lot_reworked", "lot_completed", "lot_scrapped", "tool_state_changed",
        "tool_connected", "tool_disconnected", "alarm_set", "alarm_cleared", "recipe_verified",
        "recipe_mismatch", "spc_violation", "spc_limits_changed", "process_data_summary",
        "track_in_refused", "dispatch_list", "wip_snapshot"}
    assert set(schema["commands"]) == {
        "define_route", "define_product", "define_tool", "create_lot", "hold_lot", "release_lot",
        "scrap_lot", "release_tool", "approve_recipe", "qualify_tool", "disqualify_tool"}
    assert schema["events"]["wip_snapshot"]["stream"] == "wip"
    assert set(schema["envelope"]["$ref"].split("/")[-1:]) == {"Envelope"}
    create = schema["$defs"]["CreateLot"]
    assert {"command_id", "lot_id", "production_order", "product_id", "wafers"} <= set(
        create["required"])
    step = schema["$defs"]["RouteStep"]["properties"]
    assert {"tool_group", "recipe_id", "recipe_version", "process_time_s", "batch_max_lots",
            "setup_group", "queue_time_limit_s", "rework_route_id"} <= set(step)
