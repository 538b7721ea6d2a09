"""Relay against a real redis-server: ordered, gap-free delivery; Redis outages lose nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest
import redis as redis_sync
from prometheus_client import REGISTRY

from daemon import events as ev
from equipment import events as dom
from tests.daemon.bus_support import (
    assert_in_order_once,
    define_master_data,
    read_stream,
    running_bus,
)
from tests.support import eventually

FIELDS = {"type", "v", "seq", "eid", "ts", "data", "id"}


async def flow_lots(bus, first: int, n: int) -> None:
    """Create lots and run each through its first step via tool events (the sink)."""
    for i in range(first, first + n):
        bus.mes.create_lot(f"L{i:04d}", "PO-1", "P-A", 25)
    for i in range(first, first + n):
        await bus.sink.submit([
            dom.ProcessStarted(tool_id="LITHO01", ts=1.0, lot_id=f"L{i:04d}", recipe_id="R0"),
            dom.ProcessCompleted(tool_id="LITHO01", ts=2.0, lot_id=f"L{i:04d}", recipe_id="R0",
                                 parameters={"cd_nm": 45.0 + i % 3}),
        ])


async def test_events_arrive_in_seq_order_with_every_contract_field(redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        await flow_lots(bus, 0, 200)
        await bus.sink.submit([dom.E10StateChanged(tool_id="LITHO01", ts=3.0,
                                                   state=dom.E10State.PRODUCTIVE)])
        assert await bus.drain(10)
    lots = read_stream(redis_url, "fab:lots")
    assert all(set(e) == FIELDS for e in lots)
    assert list(lots[0]) == ["type", "v", "seq", "eid", "ts", "data", "id"]  # Redis's order
    assert all(e["v"] == str(ev.SCHEMA_VERSION) for e in lots)
    unique = assert_in_order_once(lots)
    assert len(unique) == len(lots) == 200 * 4  # created, tracked in, tracked out, moved
    assert [e["type"] for e in unique[200:204]] == ["lot_tracked_in", "lot_tracked_out",
                                                   "lot_moved", "lot_tracked_in"]
    assert unique[202]["data"]["from_step_id"] == "S0" and unique[202]["data"]["step_id"] == "S1"
    quality = assert_in_order_once(read_stream(redis_url, "fab:quality"))
    assert quality[0]["type"] == "process_data_summary"
    assert quality[0]["data"]["parameters"][0]["parameter"] == "cd_nm"
    equipment = read_stream(redis_url, "fab:equipment")
    assert equipment[-1]["type"] == "tool_state_changed"
    assert equipment[-1]["data"]["state"] == "productive"


async def test_drain_waits_for_a_commit_in_flight(redis_url, tmp_path) -> None:
    # The writer loop took L1's batch and its COMMIT is slow (a loaded machine): nothing
    # looks pending, yet drain() must not return before L1 is committed and published.
    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        assert await bus.drain(5)
        started, release = threading.Event(), threading.Event()
        commit = bus.store.commit

        def slow_commit() -> None:
            started.set()
            release.wait(5)
            commit()

        bus.store.commit = slow_commit
        bus.mes.create_lot("L1", "PO-1", "P-A", 25)
        await eventually(started.is_set, what="commit in flight")
        asyncio.get_running_loop().call_later(0.2, release.set)
        assert await bus.drain(5)
        assert [e["data"]["lot_id"] for e in read_stream(redis_url, "fab:lots")] == ["L1"]


async def test_redis_outage_then_every_event_delivered_once_in_order(persistent_redis,
                                                                    tmp_path) -> None:
    url = persistent_redis.url
    async with running_bus(url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        await flow_lots(bus, 0, 50)
        assert await bus.drain(10)
        persistent_redis.stop()
        # Tool events are still accepted and durable while Redis is away; the outbox grows.
        await flow_lots(bus, 50, 100)
        # 100 lots x (4 lots events + 1 process data summary)
        await eventually(lambda: bus.relay.depth == 500, what="outbox holds the outage's events")
        await eventually(lambda: bus.relay.lag_s() > 0, what="relay lag visible")
        persistent_redis.start()
        assert await bus.drain(20)
        await flow_lots(bus, 150, 10)
        assert await bus.drain(10)
    lots = read_stream(url, "fab:lots")
    unique = assert_in_order_once(lots)
    assert len(unique) == 160 * 4
    assert {e["data"]["lot_id"] for e in unique} == {f"L{i:04d}" for i in range(160)}


async def test_outbox_spills_from_memory_to_disk_and_drains_in_order(own_redis, tmp_path) -> None:
    # A tiny memory feed forces the relay to read the backlog back from SQLite.
    async with running_bus(own_redis.url, tmp_path, erp=False, relay_memory_events=1000,
                           relay_batch_events=300) as bus:
        define_master_data(bus)
        own_redis.stop()
        for i in range(1500):
            bus.mes.create_lot(f"L{i:05d}", "PO", "P-A", 1)
        await bus.durable()
        assert bus.relay.depth == 1500
        own_redis.start()
        assert await bus.drain(20)
    unique = assert_in_order_once(read_stream(own_redis.url, "fab:lots"))
    assert len(unique) == 1500


async def test_crash_before_the_cursor_is_stored_resends_with_the_same_eid_and_seq(
        redis_url, tmp_path) -> None:
    from daemon.consumer import ReferenceConsumer

    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        bus.writer.mark_sent = lambda jseq: None  # "crash": XADDs done, cursor never stored
        await flow_lots(bus, 0, 20)
        await bus.relay.wait_published(bus.writer.committed_jseq)
    async with running_bus(redis_url, tmp_path, erp=False) as bus:  # restart: re-sends
        assert bus.relay.depth == 100
        assert await bus.drain(10)
        await flow_lots(bus, 20, 5)
        assert await bus.drain(10)
    entries = read_stream(redis_url, "fab:lots")
    assert len(entries) == 2 * 80 + 20  # every entry of the first run twice, then the new ones
    unique = assert_in_order_once(entries)  # identical re-sends, seq 1..100 once each
    assert len(unique) == 100
    # The reference consumer shows the integrator's view: duplicates flagged and skipped.
    rows: list[dict] = []
    consumer = ReferenceConsumer("fab:lots", report=rows.append)
    for e in entries:
        consumer.on_lot_entry(e["id"], {**e, "data": json.dumps(e["data"])})
    assert consumer.duplicates == 80 and consumer.gaps == 0 and consumer.applied == 100


async def test_a_connection_setup_that_timed_out_is_not_reused(own_redis, tmp_path,
                                                               caplog) -> None:
    # Redis is frozen while the relay connects: TCP is accepted (listen backlog), SELECT
    # gets no answer in time. That half-set-up connection must be dropped: reused, its late
    # +OK is taken for an XADD's reply and every later reply is one off, so an XADD Redis
    # refuses counts as published (and a batch can count as done before Redis took it).
    import os
    import signal

    url = own_redis.url.removesuffix("/0") + "/1"  # db 1: the connection setup sends SELECT
    pid = own_redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        async with running_bus(url, tmp_path, erp=False,
                               redis_kw={"connect_timeout_s": 0.3,
                                         "command_timeout_s": 30.0}) as bus:
            define_master_data(bus)
            bus.mes.create_lot("L1", "PO-1", "P-A", 25)
            await bus.durable()
            await eventually(lambda: "unreachable (TimeoutError" in caplog.text,
                             what="the relay's connection setup timed out")
            os.kill(pid, signal.SIGCONT)
            await eventually(lambda: bus.relay.sent_jseq >= bus.writer.committed_jseq,
                             what="L1 published")
            r = redis_sync.Redis.from_url(url)
            r.set("fab:lots", "not a stream")  # Redis refuses the next lots entry
            bus.mes.create_lot("L2", "PO-1", "P-A", 25)
            await bus.durable()
            await eventually(lambda: r.info("errorstats").get("errorstat_WRONGTYPE"),
                             what="Redis refused L2")
            r.delete("fab:lots")
            r.close()
            assert await bus.drain(10)
    finally:
        os.kill(pid, signal.SIGCONT)
    # The DEL took L1 with the key; L2, refused before it, must come after it.
    lots = {e["eid"]: (e["seq"], e["data"]["lot_id"]) for e in read_stream(url, "fab:lots")}
    assert list(lots.values()) == [(2, "L2")]


def published(stream: str) -> float:
    return REGISTRY.get_sample_value("fabd_bus_events_published_total", {"stream": stream}) or 0.0


@pytest.mark.parametrize("batch", [2000, 3])
async def test_a_refused_stream_holds_back_every_later_entry_and_repeats_none(
        redis_url, tmp_path, caplog, batch) -> None:
    # An operator left a plain key at fab:lots: Redis refuses every lots entry. The relay
    # must publish what comes before the first refused entry once, hold back everything
    # after it (other streams too, or they would run ahead of the journal), and never
    # append an entry twice however often it retries.
    caplog.set_level(logging.INFO, logger="daemon.relay")
    r = redis_sync.Redis.from_url(redis_url)
    async with running_bus(redis_url, tmp_path, erp=False, relay_batch_events=batch,
                           redis_kw={"backoff_initial_s": 0.01, "backoff_max_s": 0.02}) as bus:
        define_master_data(bus)
        bus.mes.alarm("ETCH01", 1, True, "door open")
        assert await bus.drain(5)
        equipment_before = published("equipment")
        r.set("fab:lots", "not a stream")
        attempts = 0
        publish = bus.relay.publish

        async def counted(conn, rows):
            nonlocal attempts
            attempts += 1
            return await publish(conn, rows)

        bus.relay.publish = counted
        # One commit, interleaved: alarms 2 and 3, then a lot, then alarm 4, a lot, ...
        bus.mes.alarm("ETCH01", 2, True)
        bus.mes.alarm("ETCH01", 3, True)
        for i in range(4, 10):
            bus.mes.create_lot(f"L{i}", "PO-1", "P-A", 25)
            bus.mes.alarm("ETCH01", i, True)
        await bus.durable()
        start = attempts
        await eventually(lambda: attempts >= start + 4, what="several retries while refused")
        equipment = read_stream(redis_url, "fab:equipment")
        assert [e["data"]["alid"] for e in equipment] == [1, 2, 3]  # once each, nothing after
        assert published("equipment") - equipment_before == 2
        assert bus.relay.depth == 12
        errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
        assert len(errors) == 1  # one ERROR however often it retries
        assert "fab:lots" in errors[0].getMessage() and "WRONGTYPE" in errors[0].getMessage()
        r.delete("fab:lots")
        assert await bus.drain(10)
        assert bus.relay.depth == 0
        assert REGISTRY.get_sample_value("fabd_outbox_depth_events") == 0
        assert "Redis accepts entries again" in caplog.text
    r.close()
    equipment = read_stream(redis_url, "fab:equipment")
    assert len(assert_in_order_once(equipment)) == len(equipment) == 9
    assert [e["data"]["alid"] for e in equipment] == list(range(1, 10))
    lots = read_stream(redis_url, "fab:lots")
    assert len(assert_in_order_once(lots)) == len(lots) == 6
    assert [e["data"]["lot_id"] for e in lots] == [f"L{i}" for i in range(4, 10)]


async def test_a_lost_script_cache_neither_loses_nor_repeats_an_entry(persistent_redis,
                                                                     tmp_path) -> None:
    # SCRIPT FLUSH, then a Redis restart, between batches: Redis has forgotten the relay's
    # script each time (NOSCRIPT) and the relay sends it again.
    url = persistent_redis.url
    async with running_bus(url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        await flow_lots(bus, 0, 20)
        assert await bus.drain(10)
        r = redis_sync.Redis.from_url(url)
        r.script_flush()
        r.close()
        await flow_lots(bus, 20, 20)
        assert await bus.drain(10)
        persistent_redis.stop()
        persistent_redis.start()
        await flow_lots(bus, 40, 20)
        assert await bus.drain(10)
    lots = read_stream(url, "fab:lots")
    assert len(assert_in_order_once(lots)) == len(lots) == 60 * 4


async def test_a_backlog_left_by_an_earlier_run_shows_in_depth_and_lag_from_the_start(
        tmp_path) -> None:
    # The outbox gauges followed commits only: a daemon restarted with events still to
    # publish (Redis down) showed depth 0 and lag 0 until something new was committed.
    from daemon.relay import OUTBOX_DEPTH, RELAY_LAG
    from tests.support import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"   # nothing listens there
    async with running_bus(down, tmp_path, erp=False) as bus:
        define_master_data(bus)
        for i in range(5):
            bus.mes.create_lot(f"L{i}", "PO-1", "P-A", 25)
        await bus.durable()
    OUTBOX_DEPTH.set(0)     # what a new process starts with
    RELAY_LAG.set(0)
    await asyncio.sleep(1.2)
    async with running_bus(down, tmp_path, erp=False):
        await eventually(lambda: REGISTRY.get_sample_value("fabd_outbox_depth_events") == 5,
                         what="the backlog in the depth gauge")
        assert REGISTRY.get_sample_value("fabd_relay_lag_seconds") >= 1.0
