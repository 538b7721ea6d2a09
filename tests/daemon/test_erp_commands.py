"""ERP commands against a real redis-server: applied once, malformed ones dead-lettered with a reason."""

from __future__ import annotations

import datetime as dt
import json

import redis as redis_sync

from tests.daemon.bus_support import (
    assert_in_order_once,
    read_stream,
    read_stream_raw,
    running_bus,
    send_commands,
)
from tests.support import eventually

ROUTE = {"type": "define_route", "command_id": "c-route", "route_id": "RT-1", "steps": [
    {"step_id": "COAT", "tool_group": "LITHO", "recipe_id": "COAT1", "recipe_version": 1,
     "process_time_s": 60, "batch_max_lots": 2, "setup_group": "resist-a",
     "queue_time_limit_s": 3600},
    {"step_id": "ETCH", "tool_group": "ETCH", "recipe_id": "ETCH1", "recipe_version": 1,
     "process_time_s": 90}]}
PRODUCT = {"type": "define_product", "command_id": "c-prod", "product_id": "P1",
           "route_id": "RT-1"}
LOT = {"type": "create_lot", "command_id": "c-lot1", "lot_id": "L1", "production_order": "PO-9",
       "product_id": "P1", "wafers": 25, "priority": 80, "due": "2026-12-01T00:00:00Z"}


def pending_count(url: str) -> int:
    r = redis_sync.Redis.from_url(url)
    try:
        return r.xpending("fab:erp:commands", "fabd")["pending"]
    finally:
        r.close()


async def test_valid_commands_apply_and_a_duplicate_id_applies_once(redis_url, tmp_path) -> None:
    send_commands(redis_url, "fab", [
        ROUTE, PRODUCT, LOT,
        {"type": "define_tool", "command_id": "c-t1", "tool_id": "LITHO01", "tool_group": "LITHO"},
        {"type": "approve_recipe", "command_id": "c-ap1", "recipe_id": "COAT1", "version": 1,
         "checksum": "0f" * 32},
        {"type": "qualify_tool", "command_id": "c-q1", "tool_id": "LITHO01", "recipe_id": "COAT1"},
        {"type": "hold_lot", "command_id": "c-h1", "lot_id": "L1", "reason": "customer",
         "by": "erp"},
        {"type": "hold_lot", "command_id": "c-h1", "lot_id": "L1", "reason": "customer",
         "by": "erp"},  # the ERP retried: same command id
        {"type": "release_lot", "command_id": "c-r1", "lot_id": "L1", "reason": "ok",
         "by": "erp"},
    ])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.applied_total == 8 and bus.erp.duplicate_total == 1,
                         what="commands applied")
        await eventually(lambda: pending_count(redis_url) == 0, what="all acknowledged")
        lot = bus.mes.lots["L1"]
        assert (lot.state, lot.wafers, lot.priority, lot.production_order) == ("queued", 25, 80,
                                                                               "PO-9")
        assert bus.mes.check_track_in("L1", "LITHO01") is None
        assert await bus.drain(5)
    types = [e["type"] for e in read_stream(redis_url, "fab:lots")]
    assert types == ["lot_created", "lot_held", "lot_released"]  # held once, not twice
    assert read_stream_raw(redis_url, "fab:erp:dead") == []


async def test_every_malformed_command_is_dead_lettered_and_intake_goes_on(redis_url,
                                                                          tmp_path) -> None:
    bad = {
        "bad_json": "{not json",
        "unknown_type": json.dumps({"type": "launch_rocket", "command_id": "x1"}),
        "missing_field": json.dumps({"type": "create_lot", "command_id": "x2", "lot_id": "L9",
                                     "product_id": "P1", "wafers": 25}),
        "invalid_field": json.dumps({**LOT, "command_id": "x3", "lot_id": "L8", "wafers": -3}),
        "unknown_product": json.dumps({**LOT, "command_id": "x4", "lot_id": "L7",
                                       "product_id": "NOPE"}),
        "unknown_lot": json.dumps({"type": "hold_lot", "command_id": "x5", "lot_id": "GHOST",
                                   "reason": "q", "by": "erp"}),
        "unknown_route": json.dumps({**PRODUCT, "command_id": "x6", "route_id": "NOPE"}),
        "illegal_transition": json.dumps({"type": "release_lot", "command_id": "x7",
                                          "lot_id": "L1", "reason": "r", "by": "erp"}),
        "duplicate_lot": json.dumps({**LOT, "command_id": "x8"}),
        "unknown_field": json.dumps({**LOT, "command_id": "x9", "lot_id": "L6", "colour": "red"}),
    }
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT, *bad.values(),
                                     {"__fields__": {"payload": "no cmd field"}},
                                     {**LOT, "command_id": "c-lot2", "lot_id": "L2"}])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "L2" in bus.mes.lots, what="the command after the bad ones")
        await eventually(lambda: bus.erp.dead_total == len(bad) + 1, what="dead letters")
        await eventually(lambda: pending_count(redis_url) == 0, what="all acknowledged")
        assert set(bus.mes.lots) == {"L1", "L2"}  # nothing from the bad ones
        assert bus.mes.lots["L1"].state == "queued"
    dead = read_stream_raw(redis_url, "fab:erp:dead")
    codes = [d["code"] for d in dead]
    assert codes == [*bad.keys(), "no_cmd_field"]
    by_code = dict(zip(codes, dead, strict=True))
    assert "production_order" in by_code["missing_field"]["reason"]
    assert "launch_rocket" in by_code["unknown_type"]["reason"]
    assert "not held" in by_code["illegal_transition"]["reason"]
    assert by_code["bad_json"]["cmd"] == "{not json"  # the original entry travels along
    assert json.loads(by_code["unknown_lot"]["original"])["cmd"] == bad["unknown_lot"]
    assert all(d["entry_id"] for d in dead)


async def test_a_due_date_without_a_utc_offset_is_dead_lettered(redis_url, tmp_path) -> None:
    send_commands(redis_url, "fab", [ROUTE, PRODUCT,
                                     {**LOT, "command_id": "c-naive", "due": "2026-12-01T00:00:00"}])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.dead_total == 1, what="the dead letter")
        assert "L1" not in bus.mes.lots
    (dead,) = read_stream_raw(redis_url, "fab:erp:dead")
    assert dead["code"] == "invalid_field"
    assert "timezone" in dead["reason"] and "due" in dead["reason"]


async def test_pending_commands_from_a_crash_are_processed_on_start(redis_url, tmp_path) -> None:
    # A previous fabd read these (XREADGROUP as fabd-1) and died before XACK.
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT])
    r = redis_sync.Redis.from_url(redis_url)
    r.xgroup_create("fab:erp:commands", "fabd", id="0")
    r.xreadgroup("fabd", "fabd-1", {"fab:erp:commands": ">"})
    r.close()
    assert pending_count(redis_url) == 3
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "L1" in bus.mes.lots, what="pending lot created")
        await eventually(lambda: pending_count(redis_url) == 0, what="pending acknowledged")


async def test_commands_already_applied_before_a_crash_are_not_applied_again(redis_url,
                                                                            tmp_path) -> None:
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "L1" in bus.mes.lots, what="lot created")
        await eventually(lambda: pending_count(redis_url) == 0, what="acknowledged")
    # The ERP side re-sends the same commands (its own retry after a timeout).
    send_commands(redis_url, "fab", [LOT, {**LOT}])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.duplicate_total == 2, what="duplicates seen")
        assert bus.erp.dead_total == 0
        assert await bus.drain(5)
    assert [e["type"] for e in read_stream(redis_url, "fab:lots")] == ["lot_created"]


async def test_entries_another_consumer_left_pending_are_claimed(redis_url, tmp_path) -> None:
    # A replaced host ran as consumer fabd-old, read these and never came back.
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT])
    r = redis_sync.Redis.from_url(redis_url)
    r.xgroup_create("fab:erp:commands", "fabd", id="0")
    r.xreadgroup("fabd", "fabd-old", {"fab:erp:commands": ">"})
    r.close()
    async with running_bus(redis_url, tmp_path, erp_claim_idle_s=0.01) as bus:
        await eventually(lambda: "L1" in bus.mes.lots, what="claimed lot created")
        await eventually(lambda: pending_count(redis_url) == 0, what="claimed and acknowledged")


async def test_intake_pauses_at_the_outbox_bound_and_resumes(redis_url, tmp_path) -> None:
    from prometheus_client import REGISTRY

    from daemon.busconfig import StoreConfig

    r = redis_sync.Redis.from_url(redis_url)
    r.set("fab:lots", "x")  # Redis refuses lots entries: the outbox can only grow
    send_commands(redis_url, "fab", [ROUTE, PRODUCT])
    async with running_bus(redis_url, tmp_path) as bus:
        bus.store_config = StoreConfig(outbox_max_events=100)  # what the relay checks
        bus.relay.store_config = bus.store_config
        await eventually(lambda: "P1" in bus.mes.products, what="master data")
        for i in range(120):
            bus.mes.create_lot(f"X{i}", "PO", "P1", 1)
        await bus.durable()
        await eventually(lambda: bus.relay.full, what="outbox at its bound")
        assert REGISTRY.get_sample_value("fabd_outbox_depth_events") >= 100
        await eventually(lambda: bus.erp.paused, what="intake paused")
        send_commands(redis_url, "fab", [LOT])
        assert "L1" not in bus.mes.lots  # paused: the command waits in Redis
        r.delete("fab:lots")  # the operator fixes Redis: outbox drains, intake resumes
        await eventually(lambda: "L1" in bus.mes.lots, timeout_s=15, what="intake resumed")
        assert await bus.drain(10)
    r.close()
    # At least once: a pipeline the DEL cut in two is sent again whole (same eid and seq).
    lots = assert_in_order_once(read_stream(redis_url, "fab:lots"))
    assert [e["data"]["lot_id"] for e in lots] == [f"X{i}" for i in range(120)] + ["L1"]


async def test_stop_finishes_the_batch_in_hand_and_leaves_the_rest_in_redis(redis_url,
                                                                           tmp_path) -> None:
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "L1" in bus.mes.lots, what="lot created")
        await bus.erp.stop()
        await eventually(lambda: pending_count(redis_url) == 0, what="batch acknowledged")
        send_commands(redis_url, "fab", [{**LOT, "command_id": "c-late", "lot_id": "L-late"}])
        # Stopped: a bus at stop flushes and drains; the late command is not taken.
        assert await bus.drain(5)
        assert "L-late" not in bus.mes.lots
    async with running_bus(redis_url, tmp_path) as bus:  # the next start takes it
        await eventually(lambda: "L-late" in bus.mes.lots, what="late command applied")


async def test_intake_survives_a_redis_restart_that_lost_the_group(own_redis, tmp_path) -> None:
    url = own_redis.url
    send_commands(url, "fab", [ROUTE, PRODUCT])
    async with running_bus(url, tmp_path) as bus:
        await eventually(lambda: "P1" in bus.mes.products, what="master data")
        own_redis.stop()  # no persistence: the stream and its consumer group are gone after
        own_redis.start()
        send_commands(url, "fab", [LOT])  # a new stream, no group yet: fabd recreates it
        await eventually(lambda: "L1" in bus.mes.lots, timeout_s=15, what="intake back")
        await eventually(lambda: pending_count(url) == 0, what="acknowledged")


def refused_total(url: str, error: str) -> int:
    """How many commands Redis answered with `error` (INFO errorstats)."""
    r = redis_sync.Redis.from_url(url)
    try:
        return r.info("errorstats").get(f"errorstat_{error}", {}).get("count", 0)
    finally:
        r.close()


async def test_a_dead_letter_redis_refuses_is_not_acknowledged_away(own_redis, tmp_path) -> None:
    # Redis refuses the dead-letter XADD (here a wrong key type; OOM refuses it the same way)
    # but would take the XACK: the invalid command must stay pending until its dead letter
    # is written, not be acknowledged with no trace.
    url = own_redis.url
    r = redis_sync.Redis.from_url(url)
    r.set("fab:erp:dead", "not a stream")
    send_commands(url, "fab", [{"type": "launch_rocket", "command_id": "x1"}, ROUTE])
    async with running_bus(url, tmp_path) as bus:
        await eventually(lambda: "RT-1" in bus.mes.routes, what="the valid command applied")
        await eventually(lambda: refused_total(url, "WRONGTYPE") >= 1,
                         what="Redis refused the dead letter")
        r.delete("fab:erp:dead")  # the operator fixes Redis
        await eventually(lambda: read_stream_raw(url, "fab:erp:dead"), what="dead letter written")
        await eventually(lambda: pending_count(url) == 0, what="all acknowledged")
    r.close()
    dead = read_stream_raw(url, "fab:erp:dead")
    assert [(d["code"], json.loads(d["cmd"])["command_id"]) for d in dead][:1] == [
        ("unknown_type", "x1")]
    assert {d["entry_id"] for d in dead} == {dead[0]["entry_id"]}  # only ever that entry


async def test_a_rejected_command_delivered_again_is_dead_lettered_not_applied(own_redis,
                                                                               tmp_path) -> None:
    # hold_lot L1 comes before create_lot L1 in one batch: rejected (unknown lot), L1 created.
    # Until its dead letter is written the batch is pending and is delivered again (a retry,
    # a Redis blip, a restart): by then L1 exists, yet the hold was rejected and stays so.
    url = own_redis.url
    hold = {"type": "hold_lot", "command_id": "c-h1", "lot_id": "L1", "reason": "q", "by": "erp"}
    r = redis_sync.Redis.from_url(url)
    r.set("fab:erp:dead", "not a stream")
    send_commands(url, "fab", [ROUTE, PRODUCT, hold, LOT])
    async with running_bus(url, tmp_path) as bus:
        await eventually(lambda: "L1" in bus.mes.lots, what="lot created")
        await eventually(lambda: refused_total(url, "WRONGTYPE") >= 2 or pending_count(url) == 0,
                         what="the batch came again")
        assert bus.mes.lots["L1"].holds == []
    r.delete("fab:erp:dead")
    async with running_bus(url, tmp_path) as bus:  # a restart delivers the batch once more
        await eventually(lambda: pending_count(url) == 0, what="all acknowledged")
        assert (bus.mes.lots["L1"].state, bus.mes.lots["L1"].holds) == ("queued", [])
        assert await bus.drain(5)
    r.close()
    dead = read_stream_raw(url, "fab:erp:dead")
    assert [(d["code"], json.loads(d["cmd"])["command_id"]) for d in dead] == [
        ("unknown_lot", "c-h1")]
    assert [e["type"] for e in read_stream(url, "fab:lots")] == ["lot_created"]


async def test_a_pending_entry_deleted_before_the_restart_is_acknowledged_not_dead_lettered(
        redis_url, tmp_path) -> None:
    # fabd applied create_lot L1 and died before its XACK; then the entry left the stream
    # (the ERP's MAXLEN trim, or an XDEL). Redis hands the pending entry back with no
    # fields: there is nothing to judge, and a dead letter would tell the ERP that its
    # command, which was applied, was refused.
    send_commands(redis_url, "fab", [ROUTE, PRODUCT])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "P1" in bus.mes.products and pending_count(redis_url) == 0,
                         what="master data applied")
    (entry_id,) = send_commands(redis_url, "fab", [LOT])
    r = redis_sync.Redis.from_url(redis_url)
    r.xreadgroup("fabd", "fabd-1", {"fab:erp:commands": ">"})  # read, "crash" before XACK
    r.xdel("fab:erp:commands", entry_id)
    r.close()
    assert pending_count(redis_url) == 1
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: pending_count(redis_url) == 0, what="pending entry acknowledged")
        assert bus.erp.dead_total == 0
    assert read_stream_raw(redis_url, "fab:erp:dead") == []


async def test_a_lot_id_a_batch_report_would_split_is_dead_lettered(redis_url, tmp_path) -> None:
    # A batch tool reports its lots comma-separated (trimmed): a lot created as "L1,L2" or
    # " L3" could never be tracked in or out; the ERP must hear why, not get a lot stuck.
    send_commands(redis_url, "fab", [ROUTE, PRODUCT,
                                     {**LOT, "command_id": "c-comma", "lot_id": "L1,L2"},
                                     {**LOT, "command_id": "c-blank", "lot_id": " L3"},
                                     {**LOT, "command_id": "c-ok", "lot_id": "L4"}])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: "L4" in bus.mes.lots, what="the valid lot")
        await eventually(lambda: bus.erp.dead_total == 2, what="dead letters")
        assert set(bus.mes.lots) == {"L4"}
    dead = read_stream_raw(redis_url, "fab:erp:dead")
    assert [(d["code"], json.loads(d["cmd"])["command_id"]) for d in dead] == [
        ("invalid_field", "c-comma"), ("invalid_field", "c-blank")]
    assert "comma" in dead[0]["reason"]


async def test_update_lot_and_scrap_wafers_apply_and_their_mistakes_are_dead_lettered(
        redis_url, tmp_path) -> None:
    """An expedite, a partial scrap; a misspelt field, an update that changes nothing and a
    scrap of every wafer go to the dead letters with a reason, and change nothing."""
    update = {"type": "update_lot", "command_id": "u1", "lot_id": "L1", "reason": "expedite",
              "by": "planner", "priority": 95, "due": "2026-12-05T12:00:00+01:00"}
    scrap = {"type": "scrap_wafers", "command_id": "s1", "lot_id": "L1", "wafers": 2,
             "reason": "chipped", "by": "op"}
    bad = [{**update, "command_id": "u2", "priorty": 10},
           {"type": "update_lot", "command_id": "u3", "lot_id": "L1", "reason": "x", "by": "y"},
           {**scrap, "command_id": "s2", "wafers": 23}]
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT, update, scrap, *bad])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.dead_total == 3, what="dead letters")
        await eventually(lambda: pending_count(redis_url) == 0, what="all acknowledged")
        lot = bus.mes.lots["L1"]
        assert (lot.priority, lot.wafers) == (95, 23)
        assert lot.due == dt.datetime(2026, 12, 5, 11, tzinfo=dt.UTC)
        assert await bus.drain(5)
    lots = read_stream(redis_url, "fab:lots")
    assert [e["type"] for e in lots] == ["lot_created", "lot_updated", "wafers_scrapped"]
    assert lots[1]["data"]["changed"] == ["priority", "due"]
    assert (lots[2]["data"]["wafers"], lots[2]["data"]["scrapped"]) == (23, 2)
    dead = read_stream_raw(redis_url, "fab:erp:dead")
    assert [d["code"] for d in dead] == ["unknown_field", "invalid_field", "illegal_transition"]
    assert "priorty" in dead[0]["reason"]
    assert "changes nothing" in dead[1]["reason"]
    assert "scrap_lot" in dead[2]["reason"] and "23 wafers" in dead[2]["reason"]


async def test_a_future_hold_from_the_erp_is_planned_and_a_wrong_step_is_dead_lettered(
        redis_url, tmp_path) -> None:
    plan = {"type": "hold_lot", "command_id": "f1", "lot_id": "L1", "reason": "customer audit",
            "by": "quality", "at_step": "ETCH"}
    typo = {**plan, "command_id": "f2", "reason": "other", "at_step": "ETCH-9"}
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT, plan, typo])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.dead_total == 1, what="the dead letter")
        await eventually(lambda: pending_count(redis_url) == 0, what="all acknowledged")
        lot = bus.mes.lots["L1"]
        assert (lot.state, [h.at_step for h in lot.future_holds]) == ("queued", ["ETCH"])
        assert await bus.drain(5)
    lots = read_stream(redis_url, "fab:lots")
    assert [e["type"] for e in lots] == ["lot_created", "future_hold_set"]
    assert lots[1]["data"]["at_step"] == "ETCH" and lots[1]["data"]["reason"] == "customer audit"
    (dead,) = read_stream_raw(redis_url, "fab:erp:dead")
    assert dead["code"] == "unknown_step" and "ETCH-9" in dead["reason"]


async def test_split_and_merge_from_the_command_stream(redis_url, tmp_path) -> None:
    """An engineering split and its merge back, through fab:erp:commands; a merge into a lot
    that does not exist is dead-lettered and changes nothing."""
    split = {"type": "split_lot", "command_id": "sp1", "lot_id": "L1", "child_lot_id": "L1-E",
             "wafers": 3, "reason": "DOE", "by": "eng"}
    merge = {"type": "merge_lot", "command_id": "mg1", "lot_id": "L1-E", "into_lot_id": "L1",
             "reason": "DOE done", "by": "eng"}
    ghost = {**merge, "command_id": "mg0", "into_lot_id": "GHOST"}
    send_commands(redis_url, "fab", [ROUTE, PRODUCT, LOT, split, ghost, merge])
    async with running_bus(redis_url, tmp_path) as bus:
        await eventually(lambda: bus.erp.dead_total == 1, what="the dead letter")
        await eventually(lambda: pending_count(redis_url) == 0, what="all acknowledged")
        assert (bus.mes.lots["L1"].wafers, bus.mes.lots["L1-E"].state) == (25, "merged")
        assert await bus.drain(5)
    lots = read_stream(redis_url, "fab:lots")
    assert [e["type"] for e in lots] == ["lot_created", "lot_split", "lot_merged"]
    assert lots[1]["data"]["parent_lot_id"] == "L1" and lots[1]["data"]["parent_wafers"] == 22
    (dead,) = read_stream_raw(redis_url, "fab:erp:dead")
    assert dead["code"] == "unknown_lot" and "GHOST" in dead["reason"]
