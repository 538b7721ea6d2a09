"""GEM host session state after a reconnect, against the secsgem tool simulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from equipment.events import (
    E10State,
    E10StateChanged,
    ProcessCompleted,
    RecordingSink,
    RemoteCommand,
    ToolConnected,
)
from equipment.gem.config import GemToolConfig
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig
from tests.support import eventually


@contextlib.asynccontextmanager
async def _running(sim: GemToolSim, sink: RecordingSink,
                   **overrides: object) -> AsyncIterator[GemHostSession]:
    hsms = HsmsConfig(host="127.0.0.1", port=sim.port, t3_reply_timeout_s=20.0,
                      t5_connect_separation_s=0.2, t6_control_timeout_s=10.0,
                      t7_not_selected_timeout_s=20.0, reconnect_backoff_max_s=0.5,
                      linktest_interval_s=0, e37_ranges=False)
    values: dict[str, object] = {"tool_id": sim.config.tool_id, "hsms": hsms,
                                 "comm_retry_s": 0.3, "spool_settle_s": 0.2, **overrides}
    session = GemHostSession(GemToolConfig(**values), sink)  # type: ignore[arg-type]
    task = asyncio.create_task(session.run(), name=f"hsms[{sim.config.tool_id}]")
    try:
        await session.wait_for(lambda s: s.communicating, timeout_s=60)
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_trace_of_an_idle_tool_after_a_reconnect_belongs_to_no_lot() -> None:
    """Many tools keep the last lot id in their current-lot variable while idle. The
    status read at a reconnect took it for the lot on the tool, so every trace sample of
    the idle tool went to SPC under that finished lot (charted on the step it had moved
    to) until the tool started another lot."""
    sim = GemToolSim(GemToolSimConfig(tool_id="SIM-KEEP", process_time_s=0.3,
                                      current_lot_kept=True, t3_reply_timeout_s=30.0))
    await sim.start()
    try:
        sink = RecordingSink()
        async with _running(sim, sink, trace_period_s=0.05) as session:
            assert (await session.command(RemoteCommand.PP_SELECT, {"PPID": "ETCH-A"})).code == 0
            assert (await session.command(RemoteCommand.START, {"LOTID": "LOT-K1"})).accepted
            await eventually(lambda: sink.of(ProcessCompleted), 60, what="LOT-K1 completed")
            assert (await session.read_status([1006]))[1006] == "LOT-K1"  # kept while idle
            first = session.state.connects_total
            await sim.drop_connection()
            await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
            await eventually(lambda: len(sink.of(ToolConnected)) >= 2, 60,
                             what="ToolConnected again")
            assert sink.of(ToolConnected)[-1].running_lot == ""    # idle
            sink.point_list.clear()
            await eventually(lambda: len(sink.point_list) >= 5, 60, what="trace after reconnect")
            assert session.state.lot_id == ""
            assert {p.lot_id for p in sink.point_list} == {""}
    finally:
        await sim.stop()


async def test_a_tool_busy_at_the_spool_request_still_sends_its_spool_and_live_events() -> None:
    """A tool answering the start-up's S6F23 with RSDA 1 (busy) was never asked again:
    its spool stayed on the tool, and as E30 tools do it kept spooling behind it, so no
    event of that tool reached fabd until the next reconnect."""
    sim = GemToolSim(GemToolSimConfig(tool_id="SIM-BUSY", process_time_s=0.3,
                                      t3_reply_timeout_s=30.0))
    await sim.start()
    try:
        async with _running(sim, RecordingSink()):
            pass   # our reports are linked and enabled; nobody listens now
        await eventually(lambda: not sim.communicating, 60, what="the tool sees the host go")
        await eventually(lambda: sim.handler._outbox.empty(), 60, what="the tool's queue sent")
        await sim.set_e10("engineering", "while away")
        await eventually(lambda: sim.spooled >= 1, 60, what="event spooled")
        sim.spool_busy(2)
        sink = RecordingSink()
        async with _running(sim, sink) as session:
            await eventually(lambda: any(e.reason == "while away"
                                         for e in sink.of(E10StateChanged)), 60,
                             what="the spooled event")
            assert sim.received.count((6, 23)) >= 3 and sim.spooled == 0
            await sim.set_e10("standby", "live")
            await eventually(lambda: any(e.reason == "live" for e in sink.of(E10StateChanged)),
                             60, what="a live event")
            assert session.state.e10 is E10State.STANDBY
    finally:
        await sim.stop()
