"""After a restart, a tool counts as connected only once its session says so.

The state of record persists each tool's `connected` flag. A stop (or a crash) ends
every equipment connection without a disconnect event, so the flag read back at start
said "connected" for tools that may never come back; dispatch trusted it.
"""

from __future__ import annotations

import asyncio

from daemon import events as ev
from daemon.config import FabdConfig, ServiceConfig
from daemon.core import FabCore
from tests.daemon.bus_support import configs, read_stream, stop_tasks


def config(redis_url: str, state_dir) -> FabdConfig:  # type: ignore[no-untyped-def]
    bus = configs(redis_url)
    return FabdConfig(service=ServiceConfig(state_directory=str(state_dir)),
                      redis=bus["redis"], store=bus["store"], bus=bus["bus"])


async def test_a_tool_connected_before_a_restart_gets_no_dispatch_list_until_it_is_back(
        redis_url, tmp_path) -> None:
    cfg = config(redis_url, tmp_path)          # advisory mode: lists are published
    first = FabCore(cfg)
    await first.start()
    mes = first.bus.mes
    mes.define_route("RT", [ev.RouteStep(step_id="S1", tool_group="ETCH", recipe_id="E1",
                                         recipe_version=1, process_time_s=60)])
    mes.define_product("P", "RT")
    mes.define_tool("ETCH01", "ETCH")
    mes.qualify("ETCH01", "E1", True)
    mes.tool_connected("ETCH01", "hsms")        # as its session reported it
    mes.set_tool_state("ETCH01", "standby")
    mes.create_lot("L1", "PO", "P", 25)
    await first.bus.close()                     # stopped (or killed) with the tool connected

    core = FabCore(cfg)                         # the tool is switched off meanwhile
    await core.start()
    core._warm_dispatch()
    relay = asyncio.create_task(core.bus.relay_loop())
    writer = asyncio.create_task(core.bus.writer_loop())
    try:
        assert not core.bus.mes.tools["ETCH01"].connected
        assert core.status()["tools"][0]["connected"] is False
        core.step_sync()
        core.step_dispatch()
        assert await core.bus.drain(10.0)
    finally:
        await stop_tasks([relay, writer])
        await core.bus.close()
    equipment = read_stream(redis_url, "fab:equipment")
    assert not [e for e in equipment if e["type"] == "dispatch_list"]
    gone = [e["data"] for e in equipment if e["type"] == "tool_disconnected"]
    assert [d["tool_id"] for d in gone] == ["ETCH01"]
