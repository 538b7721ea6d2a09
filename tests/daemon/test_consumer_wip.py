"""The reference consumer against a real redis-server: its WIP matches every snapshot; gaps are found."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys

import redis as redis_sync
import redis.asyncio as aioredis

from daemon import events as ev
from daemon.consumer import ReferenceConsumer
from tests.daemon.bus_support import define_master_data, read_stream, running_bus
from tests.support import eventually


async def random_flow(bus, rng: random.Random, rounds: int) -> None:
    """Lots created, processed, reworked, held, released, expedited and scrapped (whole or
    some wafers) at random."""
    mes = bus.mes
    n = 0
    for _ in range(rounds):
        for _ in range(3):
            mes.create_lot(f"L{n:04d}", "PO", rng.choice(["P-A", "P-B"]), rng.randint(1, 25))
            n += 1
        for lot in list(mes.active_lots()):
            if lot.state == "merged":   # into a lot before it in this round
                continue
            r = rng.random()
            tool = "ETCH01" if mes.step_of(lot).tool_group == "ETCH" else "LITHO01"
            if lot.state == "held":
                if r < 0.5:
                    mes.release(lot.lot_id, "ok", "eng")
            elif lot.state == "queued" and r < 0.6:
                mes.track_in(lot.lot_id, tool)
            elif lot.state == "processing":
                mes.track_out(lot.lot_id, lot.tool_id, ok=r > 0.15)
            elif r < 0.65:
                mes.hold(lot.lot_id, "spc", "eng")
            elif r < 0.67:
                mes.scrap(lot.lot_id, "broken", "op")
            elif r < 0.70 and lot.wafers > 1:
                mes.scrap_wafers(lot.lot_id, rng.randint(1, lot.wafers - 1), "chipped", "op")
            elif r < 0.72:
                mes.update_lot(lot.lot_id, "expedite", "erp", priority=rng.randint(0, 100))
            elif r < 0.76 and lot.state != "processing" and lot.wafers > 1:
                mes.split_lot(lot.lot_id, f"{lot.lot_id}.{n}", lot.wafers // 2, "split", "eng")
                n += 1
            elif r < 0.78 and lot.state == "queued":
                mate = next((x for x in mes.active_lots() if x is not lot
                             and x.state == "queued" and x.step_id == lot.step_id
                             and x.route_id == lot.route_id and x.rework == lot.rework
                             and x.product_id == lot.product_id), None)
                if mate is not None and not lot.future_holds:
                    if mate.priority != lot.priority:   # else refused: the ERP aligns them
                        mes.update_lot(mate.lot_id, "merge", "erp", priority=lot.priority)
                    mes.merge_lot(lot.lot_id, mate.lot_id, "merge", "eng")
            elif r < 0.80 and not lot.rework and lot.future_holds == []:
                last = mes.routes[lot.route_id].steps[-1].step_id
                if last != lot.step_id:
                    mes.future_hold(lot.lot_id, "inspect", "eng", last)
        await bus.durable()
        await asyncio.sleep(0.005)


async def test_reference_consumer_wip_matches_every_snapshot(redis_url, tmp_path) -> None:
    rows: list[dict] = []
    consumer = ReferenceConsumer("fab:lots", check_wip=True, report=rows.append)
    client = aioredis.Redis.from_url(redis_url)
    async with running_bus(redis_url, tmp_path, erp=False, snapshot_interval_s=0.05) as bus:
        define_master_data(bus)
        bus.mes.define_route("RW", [ev.RouteStep(step_id="RW1", tool_group="ETCH",
                                                 recipe_id="RW", recipe_version=1,
                                                 process_time_s=10)])
        steps = [ev.RouteStep(step_id=f"B{i}", tool_group="ETCH", recipe_id="RB",
                              recipe_version=1, process_time_s=10, rework_route_id="RW")
                 for i in range(2)]
        bus.mes.define_route("RT-B", steps)
        bus.mes.define_product("P-B", "RT-B")
        task = asyncio.create_task(consumer.run(client, "erp", "c1", block_ms=50))
        try:
            await random_flow(bus, random.Random(7), 60)
            bus.snapshots.snapshot_now()
            assert await bus.drain(10)
            final_seq = bus.mes.seq["lots"]
            emitted = bus.snapshots.emitted
            await eventually(lambda: consumer.last_seq == final_seq, what="consumer caught up")
            await eventually(lambda: consumer.snapshots_ok + consumer.snapshots_bad >= emitted,
                             what="every snapshot checked")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
    assert emitted >= 3
    assert consumer.snapshots_bad == 0, [r for r in rows if r["kind"] == "wip_mismatch"]
    assert consumer.snapshots_ok == emitted
    assert consumer.gaps == 0 and consumer.duplicates == 0
    types = {e["type"] for e in read_stream(redis_url, "fab:lots")}
    assert {"lot_reworked", "lot_scrapped", "lot_completed", "lot_held", "wafers_scrapped",
            "lot_updated", "future_hold_set", "lot_split", "lot_merged"} <= types


def add_entry(r, stream: str, seq: int, eid: str, etype: str, data: dict) -> None:
    r.xadd(stream, {"type": etype, "v": 1, "seq": seq, "eid": eid, "ts": "2026-01-01T00:00:00Z",
                    "data": json.dumps(data)})


def test_cli_reports_gaps_duplicates_and_a_wrong_snapshot(redis_url) -> None:
    r = redis_sync.Redis.from_url(redis_url)
    lot = {"lot_id": "L1", "product_id": "P", "step_id": "S1", "wafers": 25}
    add_entry(r, "fab:lots", 1, "e1", "lot_created", lot)
    add_entry(r, "fab:lots", 1, "e1", "lot_created", lot)  # re-sent after a crash
    add_entry(r, "fab:lots", 2, "e2", "lot_created", {**lot, "lot_id": "L2"})
    snap = {"lots_seq": 2, "total_lots": 2, "total_wafers": 50,
            "counts": [{"product_id": "P", "step_id": "S1", "lots": 2, "wafers": 50}]}
    add_entry(r, "fab:wip", 1, "w1", "wip_snapshot", snap)
    add_entry(r, "fab:lots", 5, "e5", "lot_moved",
              {**lot, "step_id": "S2", "from_step_id": "S1", "route_id": "R"})  # 3, 4 lost
    bad = {**snap, "lots_seq": 5}  # claims nothing moved: the consumer must disagree
    add_entry(r, "fab:wip", 2, "w2", "wip_snapshot", bad)
    add_entry(r, "fab:lots", 6, "e6", "lot_completed", {**lot, "step_id": "S2"})
    add_entry(r, "fab:wip", 3, "w3", "wip_snapshot",
              {"lots_seq": 6, "total_lots": 1, "total_wafers": 25,
               "counts": [{"product_id": "P", "step_id": "S1", "lots": 1, "wafers": 25}]})
    r.close()
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "consume", "--stream", "fab:lots", "--redis-url",
         redis_url, "--check-wip", "--json", "--idle-exit", "0.3"],
        capture_output=True, text=True, timeout=60)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = [row["kind"] for row in rows]
    assert out.returncode == 1, out.stderr
    assert kinds.count("duplicate") == 1
    assert kinds.count("gap") == 1
    assert [r["text"] for r in rows if r["kind"] == "gap"] == [
        "expected seq 3, got 5: 2 entries missing"]
    assert kinds.count("wip_ok") == 1  # the first snapshot (seq 2), before the gap
    # after a gap the consumer resyncs from the next snapshot instead of crying wolf
    assert "wip_baseline" in kinds
    assert rows[-1]["kind"] == "summary" and rows[-1]["gaps"] == 1
