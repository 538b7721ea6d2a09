"""An OPC UA tool's current lot, read at connect, is compared with the record (real sockets).

fabd was restarted while an OPC UA tool processed L1. If the tool finished L1 while fabd was
down, nothing would ever report its end (OPC UA keeps no spool, and the new session never
saw L1 start): the record held the tool busy with L1 for ever. The session now reads the
tool's lot node at connect and says what runs (`ToolConnected.running_lot`), so the record
is checked as for a GEM tool: a lot the tool no longer runs is taken off it and held for an
engineer; a lot still running is left alone and completes as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from daemon.config import DispatchSection, EquipmentSection, FabdConfig, ServiceConfig
from daemon.core import FabCore
from daemon.mes import COMPLETED, HELD, PROCESSING
from equipment.opcua.session import OpcUaSession
from equipment.sim.opcua_tool import OpcUaToolSim, OpcUaToolSimConfig
from tests.daemon.bus_support import configs, read_stream, stop_tasks
from tests.daemon.test_dispatch_auto import eventually, route

TOOL = "ETCH07"


@contextlib.asynccontextmanager
async def restarted_fab(redis_url: str, tmp_path: Path,
                        tool_runs: str) -> AsyncIterator[tuple[FabCore, OpcUaToolSim]]:
    """The record says L1 processes on TOOL; the tool runs `tool_runs` ("" idle) when the
    (restarted) daemon's OPC UA session connects."""
    sim = OpcUaToolSim(OpcUaToolSimConfig(tool_id=TOOL, process_time_s=1.0,
                                          sample_interval_s=0.05))
    await sim.start()
    if tool_runs:
        await sim.start_lot(tool_runs, "ETCH-A")
    profile = sim.client_profile(reconnect_min_s=0.1, reconnect_max_s=0.5)
    bus_cfg = configs(redis_url)
    cfg = FabdConfig(service=ServiceConfig(state_directory=str(tmp_path)),
                     redis=bus_cfg["redis"], store=bus_cfg["store"], bus=bus_cfg["bus"],
                     dispatch=DispatchSection(mode="advisory", publish_lists=False),
                     equipment=EquipmentSection(opcua=[profile]))
    core = FabCore(cfg)
    await core.start()
    mes = core.bus.mes
    mes.define_route("RT", route(("ETCH", "ETCH-A")))
    mes.define_product("P", "RT")
    mes.define_tool(TOOL, "ETCH")
    mes.create_lot("L1", "PO", "P", 25)
    mes.track_in("L1", TOOL, "ETCH-A")        # what the record held before the restart
    session = OpcUaSession(profile, core.sink)
    bus = core.bus
    tasks = [asyncio.create_task(bus.writer_loop(), name="bus.writer"),
             asyncio.create_task(bus.relay_loop(), name="bus.relay"),
             asyncio.create_task(session.run(), name=f"opcua[{TOOL}]")]
    try:
        await eventually(lambda: mes.tools[TOOL].connected, what="the tool connected")
        yield core, sim
    finally:
        await stop_tasks(tasks, failed_ok=True)
        await bus.close()
        await sim.close()


async def test_a_lot_the_tool_no_longer_runs_after_a_restart_is_held_and_the_tool_freed(
        redis_url, tmp_path) -> None:
    async with restarted_fab(redis_url, tmp_path, tool_runs="") as (core, _sim):
        mes = core.bus.mes
        await eventually(lambda: mes.lots["L1"].state == HELD, what="L1 held")
        lot = mes.lots["L1"]
        assert lot.tool_id == "" and mes.tools[TOOL].lot_id == ""
        [hold] = lot.holds
        assert hold.kind == "completion_lost" and f"not reported by {TOOL}" in hold.reason
        await core.bus.durable()
        assert await core.bus.drain(10)
    kinds = [e["type"] for e in read_stream(redis_url, "fab:lots")
             if e["data"]["lot_id"] == "L1"]
    assert kinds[-2:] == ["lot_completion_lost", "lot_held"]


async def test_a_lot_still_running_after_a_restart_is_left_alone_and_completes(
        redis_url, tmp_path) -> None:
    async with restarted_fab(redis_url, tmp_path, tool_runs="L1") as (core, _sim):
        mes = core.bus.mes
        assert mes.lots["L1"].state == PROCESSING and mes.tools[TOOL].lot_id == "L1"
        await eventually(lambda: mes.lots["L1"].state == COMPLETED, what="L1 completed")
        assert mes.lots["L1"].holds == []
