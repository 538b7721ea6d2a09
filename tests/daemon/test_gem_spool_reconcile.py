"""Reconnect reconciliation of a GEM tool that never goes quiet after S6F23.

After a reconnect the GEM session lets the tool's spool replay arrive, then reads what
the tool runs, and the core compares it with the record (a lot the tool no longer runs
is held `completion_lost`). The session waited for the tool to go quiet, counting every
message: a tool tracing faster than `spool_settle_s` (S6F1 every 50 ms) never did, the
session gave up and said nothing about what runs, and the lot whose completion the tool
lost stayed "in process" on an idle tool for ever. Now trace data does not hold the
spool up, and a spool that does not settle within `spool_drain_max_s` is reconciled
anyway (a spooled completion arriving after that still ends its step).

A FabCore with its GEM host session talks to the secsgem tool simulator through a TCP
relay the test cuts and restores; the bus runs against the test's redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from daemon.config import DispatchSection, EquipmentSection, FabdConfig, ServiceConfig
from daemon.core import FabCore
from daemon.mes import HELD
from dispatch.config import Policy
from equipment.gem.config import GemToolConfig
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig
from tests.daemon.bus_support import configs, stop_tasks
from tests.daemon.test_dispatch_auto import Fab, body, eventually, route, sha
from tests.daemon.test_reconnect_reconcile import (
    TOOL,
    Link,
    drop_link,
    of_lot,
    restore_link,
    start_lot,
)


@contextlib.asynccontextmanager
async def tracing_fab(redis_url: str, tmp_path: Path, *, spool_max_messages: int,
                      **gem: object) -> AsyncIterator[tuple[Fab, Link]]:
    """One auto-dispatched ETCH tool tracing every 50 ms, behind a Link; route RT = one step."""
    sim = GemToolSim(GemToolSimConfig(tool_id=TOOL, process_time_s=2.0,
                                      recipes={"E1": body("E1")},
                                      spool_max_messages=spool_max_messages))
    await sim.start()
    link = Link(sim.port)
    await link.start()
    values: dict[str, object] = {"spool_settle_s": 0.5, "trace_period_s": 0.05, **gem}
    cfg_gem = GemToolConfig(tool_id=TOOL, comm_retry_s=0.3,
                            hsms=HsmsConfig(host="127.0.0.1", port=link.port,
                                            t5_connect_separation_s=0.2,
                                            reconnect_backoff_max_s=0.5,
                                            linktest_interval_s=0, e37_ranges=False),
                            **values)  # type: ignore[arg-type]
    bus_cfg = configs(redis_url)
    cfg = FabdConfig(service=ServiceConfig(state_directory=str(tmp_path)),
                     redis=bus_cfg["redis"], store=bus_cfg["store"], bus=bus_cfg["bus"],
                     dispatch=DispatchSection(mode="auto", command_timeout_s=5.0,
                                              policy=Policy()),
                     equipment=EquipmentSection(hsms=[cfg_gem]))
    core = FabCore(cfg)
    session = GemHostSession(cfg_gem, core.sink)
    core.sessions[TOOL] = session
    await core.start()
    core._warm_dispatch()
    mes = core.bus.mes
    mes.define_route("RT", route(("ETCH", "E1")))
    mes.define_product("P", "RT")
    mes.approve_recipe("E1", 1, sha(body("E1")))
    mes.define_tool(TOOL, "ETCH")
    mes.qualify(TOOL, "E1", True)
    bus = core.bus
    tasks = [asyncio.create_task(bus.writer_loop(), name="bus.writer"),
             asyncio.create_task(bus.relay_loop(), name="bus.relay"),
             asyncio.create_task(bus.erp_loop(), name="erp"),
             asyncio.create_task(session.run(), name=f"hsms[{TOOL}]"),
             asyncio.create_task(core._actions_loop(), name="dispatch.actions[0]")]
    try:
        await eventually(lambda: mes.tools[TOOL].connected, what="the tool connected")
        await eventually(lambda: sim.traces_sent >= 3, what="the tool tracing")
        yield Fab(core, {TOOL: sim}, redis_url), link
    finally:
        await stop_tasks(tasks, failed_ok=True)
        await bus.close()
        await link.stop()
        await sim.stop()


async def test_a_fast_tracing_tool_is_reconciled_after_a_spool_replay(
        redis_url, tmp_path) -> None:
    # A one-message spool: the completion is overwritten by the E10 change that follows
    # it (E30 overwrite spool), so the tool has something to replay but not the end.
    async with tracing_fab(redis_url, tmp_path, spool_max_messages=1) as (fab, link):
        sim = fab.sims[TOOL]
        await start_lot(fab, "L1")
        connects = await drop_link(fab, link)
        await eventually(lambda: "S6F11 CEID 3002" in sim.lost, what="the completion lost")
        assert sim.spooled == 1                         # ... and something left to replay
        assert fab.running_on("L1") == TOOL
        await restore_link(fab, link, connects)
        assert sim.traces_sent and fab.core.sessions[TOOL].state.spooled_requested

        lot = fab.lot("L1")
        assert lot.state == HELD and lot.tool_id == ""
        assert [h.kind for h in lot.holds] == ["completion_lost"]
        assert fab.mes.tools[TOOL].lot_id == ""         # the tool is free for dispatch
        kinds = [e["type"] for e in of_lot(await fab.lots_stream(), "L1")]
        assert kinds.count("lot_completion_lost") == 1 and kinds.count("lot_held") == 1

