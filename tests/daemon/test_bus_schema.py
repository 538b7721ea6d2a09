"""`fabd schema`: the JSON Schema names every published event and every ERP command."""

from __future__ import annotations

import json
import subprocess
import sys

import redis as redis_sync

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
        "track_in_refused", "dispatch_list", "wip_snapshot", "lot_completion_lost", "lot_updated",
        "wafers_scrapped", "future_hold_set", "future_hold_cancelled",
        "lot_split", "lot_merged"}
    assert set(schema["commands"]) == {
        "define_route", "define_product", "define_tool", "create_lot", "hold_lot", "release_lot",
        "complete_step", "scrap_lot", "release_tool", "approve_recipe", "qualify_tool", "disqualify_tool",
        "update_lot", "scrap_wafers", "split_lot", "merge_lot"}
    assert schema["events"]["wip_snapshot"]["stream"] == "wip"
    assert set(schema["envelope"]["$ref"].split("/")[-1:]) == {"Envelope"}
    create = schema["$defs"]["CreateLot"]
    assert {"command_id", "lot_id", "production_order", "product_id", "wafers"} <= set(
        create["required"])
    step = schema["$defs"]["RouteStep"]["properties"]
    assert {"tool_group", "recipe_id", "recipe_version", "process_time_s", "batch_max_lots",
            "setup_group", "queue_time_limit_s", "rework_route_id"} <= set(step)


async def test_every_published_entry_validates_against_the_schema(redis_url, tmp_path) -> None:
    """What an integrator does with `fabd schema`: validate the entries fabd really writes."""
    import random

    import jsonschema

    from tests.daemon.bus_support import define_master_data, read_stream, running_bus
    from tests.daemon.test_consumer_wip import random_flow

    schema = ev.json_schema()

    def validator(sub: dict) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator({**sub, "$defs": schema["$defs"]})

    async with running_bus(redis_url, tmp_path, erp=False, snapshot_interval_s=0.05) as bus:
        define_master_data(bus)
        mes = bus.mes
        mes.define_route("RW", [ev.RouteStep(step_id="RW1", tool_group="ETCH", recipe_id="RW",
                                             recipe_version=1, process_time_s=10)])
        mes.define_route("RT-B", [ev.RouteStep(step_id=f"B{i}", tool_group="ETCH",
                                               recipe_id="RB", recipe_version=1,
                                               process_time_s=10, rework_route_id="RW")
                                  for i in range(2)])
        mes.define_product("P-B", "RT-B")
        mes.tool_connected("ETCH01", "hsms", "127.0.0.1:5000")
        mes.set_tool_state("ETCH01", "productive", "run")
        mes.set_control_state("ETCH01", "online_remote")
        mes.alarm("ETCH01", 7, True, "door open")
        mes.alarm("ETCH01", 7, False, "door open")
        mes.recipe_report("ETCH01", "R1", f"{1:064x}")
        mes.recipe_report("ETCH01", "R1", f"{9:064x}")
        mes.dispatch_list("ETCH01", ["L0000"], [0.5])
        mes.process_unexpected("ETCH01", "NOPE", "started", "unknown lot")
        await random_flow(bus, random.Random(3), 15)
        mes.process_summary("L0000", "ETCH01", "R1", [ev.ParameterSummary(
            parameter="rf_W", n=3, mean=1.0, min=0.5, max=1.5, sd=0.5)])
        mes.spc_violation("ETCH01/-/S1/rf_W", "ETCH01", "rf_W", "nelson1", 3.0, "L0000",
                          "notify", test=1, points=[ev.SpcPoint(value=3.0, ts=1.0)])
        mes.spc_limits_changed("ETCH01/-/S1/rf_W", 1.0, 0.0, 2.0, "phase I")
        mes.create_lot("LOST", "PO", "P-A", 25)
        mes.track_in("LOST", "LITHO01", "R0")
        mes.completion_lost("LOST", "LITHO01", "completion not reported by LITHO01")
        mes.tool_disconnected("ETCH01", "hsms", "gone")
        bus.snapshots.snapshot_now()
        await bus.durable()
        assert await bus.drain(10)

    envelope = validator(schema["envelope"])
    seen = set()
    raw = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        for stream in ev.STREAMS:
            assert read_stream(redis_url, f"fab:{stream}"), stream
            for _id, fields in raw.xrange(f"fab:{stream}"):
                errors = [e.message for e in envelope.iter_errors(fields)]
                assert not errors, (stream, fields, errors)
                spec = schema["events"][fields["type"]]
                assert spec["stream"] == stream
                errors = [e.message for e in validator(spec["data"]).iter_errors(
                    json.loads(fields["data"]))]
                assert not errors, (stream, fields, errors)
                seen.add(fields["type"])
    finally:
        raw.close()
    assert {"lot_reworked", "lot_scrapped", "lot_completed", "lot_released", "recipe_mismatch",
            "spc_violation", "wip_snapshot", "tool_state_changed", "lot_completion_lost"} <= seen
