"""GEM host sessions against the asyncio equipment farm (our HSMS on both sides), many at once.

This is the daemon's shape: one GemHostSession per tool in one event loop. The
farm speaks the same "fabd-sim" numbering as the secsgem simulator, so the
default driver profile serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from equipment.events import (
    AlarmSet,
    ControlState,
    E10State,
    ProcessCompleted,
    RecordingSink,
    RemoteCommand,
)
from equipment.gem.config import GemToolConfig
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.farm import EquipmentFarm, FarmConfig
from tests.support import eventually


@contextlib.asynccontextmanager
async def farm_and_hosts(config: FarmConfig, sink: RecordingSink
                         ) -> AsyncIterator[tuple[EquipmentFarm, list[GemHostSession]]]:
    farm = EquipmentFarm(config)
    await farm.start()
    sessions = [GemHostSession(GemToolConfig(
        tool_id=tool.tool_id, comm_retry_s=0.5, spool_settle_s=0.05,
        hsms=HsmsConfig(port=tool.port, t3_reply_timeout_s=30.0, t5_connect_separation_s=0.2,
                        reconnect_backoff_max_s=1.0, linktest_interval_s=0,
                        e37_ranges=False)), sink) for tool in farm.tools]
    async with asyncio.TaskGroup() as tg:
        farm_task = tg.create_task(farm.run(), name="farm")
        tasks = [tg.create_task(s.run(), name=f"hsms[{s.tool_id}]") for s in sessions]
        try:
            yield farm, sessions
        finally:
            for task in tasks:
                task.cancel()
            farm.stop()
            await asyncio.wait([farm_task, *tasks])


async def test_host_sessions_bring_farm_tools_online_and_run_a_lot() -> None:
    sink = RecordingSink()
    async with farm_and_hosts(FarmConfig(tools=3, process_time_s=0.2), sink) as (farm, hosts):
        await eventually(lambda: all(h.state.communicating for h in hosts), timeout_s=60,
                         what="all sessions communicating")
        host, tool = hosts[0], farm.tools[0]
        assert host.state.control is ControlState.ONLINE_REMOTE
        assert host.state.e10 is E10State.STANDBY
        assert tool.enabled_ceids == {3001, 3002, 3003, 3004, 3005}
        recipe = host.state.recipes[0]
        assert (await host.command(RemoteCommand.PP_SELECT, {"PPID": recipe})).code == 0
        assert (await host.command(RemoteCommand.START, {"LOTID": "FARM-LOT-1"})).code == 4
        await eventually(lambda: [e for e in sink.of(ProcessCompleted)
                                  if e.lot_id == "FARM-LOT-1"], timeout_s=60,
                         what="lot completed")
        [done] = [e for e in sink.of(ProcessCompleted) if e.lot_id == "FARM-LOT-1"]
        assert done.tool_id == tool.tool_id and done.recipe_id == recipe
        assert set(done.parameters) == {"Temperature_C", "Pressure_Pa", "RFPower_W",
                                        "Thickness_nm"}
        await farm.tools[1].raise_alarm(5003)
        await eventually(lambda: sink.of(AlarmSet), timeout_s=60, what="alarm")
        assert (sink.of(AlarmSet)[0].tool_id, sink.of(AlarmSet)[0].alid) == (
            farm.tools[1].tool_id, 5003)
        body = b"approved body\n" * 1000
        assert await host.recipe_download("NEW-1", body)
        assert (await host.recipe_report("NEW-1")).size_bytes == len(body)


async def test_fifty_sessions_under_event_load_acknowledge_everything() -> None:
    sink = RecordingSink()
    config = FarmConfig(tools=50, event_rate_hz=5.0, process_time_s=1.0)
    async with farm_and_hosts(config, sink) as (farm, hosts):
        await eventually(lambda: all(h.state.communicating for h in hosts), timeout_s=60,
                         what="all sessions communicating")
        farm.stats.reset()
        await eventually(lambda: farm.stats.summary().get("acked", 0) >= 250, timeout_s=60,
                         what="load events acknowledged")
        summary = farm.stats.summary()
        assert summary["failed"] == 0, summary
        assert len({e.tool_id for e in sink.of(ProcessCompleted)}) == 50
