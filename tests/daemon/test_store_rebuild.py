"""The SQLite store: durable before the tool is acknowledged, group commit, state rebuilt on start."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec

from daemon.bus import Bus
from daemon.store import read_journal
from equipment import events as dom
from tests.daemon.bus_support import (
    configs,
    define_master_data,
    read_stream,
    running_bus,
    stop_tasks,
)


def rows(path, sql: str, *args) -> list:
    db = sqlite3.connect(path)  # a second connection, as a crash survivor would read it
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


async def test_submit_returns_only_when_the_event_is_in_the_store(redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        await bus.sink.submit([dom.AlarmSet(tool_id="ETCH01", ts=1.0, alid=42, text="He flow"),
                               dom.ProcessStarted(tool_id="LITHO01", ts=2.0, lot_id="L1")])
        # Right after the await: on disk, without any close or checkpoint.
        db = tmp_path / "fabd.sqlite3"
        types = [r[3] for r in read_journal(db)]
        assert types == ["lot_created", "alarm_set", "lot_tracked_in"]
        (body,) = rows(db, "SELECT body FROM entity WHERE kind='lot' AND id='L1'")[0]
        assert msgspec.json.decode(body)["state"] == "processing"


async def test_many_concurrent_submits_share_few_commits(redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        before = bus.writer._commits
        await asyncio.gather(*(bus.sink.submit([dom.AlarmSet(tool_id=f"T{i}", ts=1.0, alid=i)])
                               for i in range(500)))
        commits = bus.writer._commits - before
    assert 1 <= commits <= 20  # one fsync per group, not per event


async def test_state_and_sequences_survive_a_restart(redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        bus.mes.create_lot("L2", "PO", "P-A", 13)
        bus.mes.hold("L2", "spc", "eng")
        bus.mes.split_lot("L2", "L2.1", 3, "engineering split", "eng")
        bus.mes.qualify("LITHO01", "R0", True)
        await bus.sink.submit([dom.E10StateChanged(tool_id="LITHO01", ts=1.0,
                                                   state=dom.E10State.PRODUCTIVE),
                               dom.ProcessStarted(tool_id="LITHO01", ts=2.0, lot_id="L1")])
        bus.mes.future_hold("L1", "audit", "quality", bus.mes.routes["RT-A"].steps[-1].step_id)
        assert await bus.drain(5)
        before = {k: msgspec.json.encode(v) for k, v in bus.mes.lots.items()}
        tools = msgspec.json.encode(bus.mes.tools)
        seqs = dict(bus.mes.seq)
        instance = bus.mes.instance_id
    bus = Bus(state_dir=tmp_path, **configs(redis_url))
    await bus.start()
    try:
        assert {k: msgspec.json.encode(v) for k, v in bus.mes.lots.items()} == before
        assert msgspec.json.encode(bus.mes.tools) == tools
        assert bus.mes.seq == seqs and bus.mes.instance_id == instance
        assert bus.relay.depth == 0  # everything was published before the stop
        assert bus.mes.holds()["L2"][0].reason == "spc"
        assert bus.mes.holds()["L2.1"][0].reason == "spc"   # the split-off lot, in the WIP
        assert [h.reason for h in bus.mes.lots["L1"].future_holds] == ["audit"]
        bus.mes.create_lot("L3", "PO", "P-A", 1)  # sequences continue where they stopped
        relay = asyncio.create_task(bus.relay_loop())
        writer = asyncio.create_task(bus.writer_loop())
        assert await bus.drain(5)
        await stop_tasks([relay, writer])
    finally:
        await bus.close()
    lots = read_stream(redis_url, "fab:lots")
    assert [e["seq"] for e in lots] == list(range(1, len(lots) + 1))
    assert lots[-1]["data"]["lot_id"] == "L3" and len({e["eid"] for e in lots}) == len(lots)


async def test_journal_keeps_only_the_configured_number_of_sent_events(redis_url,
                                                                     tmp_path) -> None:
    from daemon.writer import PRUNE_EVERY_COMMITS

    async with running_bus(redis_url, tmp_path, erp=False,
                           store_kw={"journal_keep_events": 50}) as bus:
        for i in range(PRUNE_EVERY_COMMITS + 20):  # one commit per alarm
            await bus.sink.submit([dom.AlarmSet(tool_id="T1", ts=1.0, alid=i)])
            await bus.relay.wait_published(bus.writer.committed_jseq)
        await bus.drain(5)
    kept = [r[0] for r in read_journal(tmp_path / "fabd.sqlite3")]
    n, low = len(kept), min(kept)
    assert n < PRUNE_EVERY_COMMITS  # pruned; without it every event would still be there
    assert low > 1 and n >= 50  # the newest sent events stay for audit
    assert len(read_stream(redis_url, "fab:equipment")) == PRUNE_EVERY_COMMITS + 20


async def test_a_change_without_events_is_committed_without_anyone_waiting(redis_url,
                                                                          tmp_path) -> None:
    from tests.support import eventually

    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        bus.mes.define_tool("CMP01", "CMP")  # master data: no outbound event, nobody awaits
        db = tmp_path / "fabd.sqlite3"
        await eventually(lambda: rows(db, "SELECT id FROM entity WHERE kind='tool'"),
                         what="tool committed by the writer on its own")


def test_outbox_reads_resume_exactly_after_the_cursor_across_commits(tmp_path) -> None:
    from daemon.store import Store

    store = Store(tmp_path / "s.sqlite3", "NORMAL")
    store.open()
    jseq = 0
    for size in (3, 1, 5, 2):  # four group commits of different sizes
        batch = [(jseq + i + 1, "lots", jseq + i + 1, "lot_moved", f"e{jseq + i + 1}", "t", b"{}")
                 for i in range(size)]
        store.write([], batch, [], [])
        jseq += size
    for after in range(jseq + 1):
        for limit in (1, 2, 4, 100):
            got = [r[0] for r in store.read_events(after, limit)]
            assert got == list(range(after + 1, min(jseq, after + limit) + 1)), (after, limit)
    store.close()
    store.shutdown()
