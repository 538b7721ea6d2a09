"""Advisory mode: the tool (its operator) starts lots; fabd records them and says what is wrong.

A start fabd did not make is recorded as the tool reports it (the record follows the
tool), but a lot run on a tool outside the step's group, on a tool not qualified for the
step's recipe, on an inhibited tool, or with another step's recipe used to go unnoticed.
Such a start is now published as `process_unexpected` (fab:equipment) with the reasons; a
recipe body fabd never verified is normal here and is not one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from daemon.bus import Bus
from daemon.config import FabdConfig, ServiceConfig
from daemon.core import FabCore
from daemon.mes import PROCESSING
from equipment import events as dom
from tests.daemon.bus_support import STEPS, configs, define_master_data, read_stream, stop_tasks


@contextlib.asynccontextmanager
async def running_core(redis_url: str, state_dir) -> AsyncIterator[FabCore]:  # type: ignore[no-untyped-def]
    """The daemon core (advisory, the default mode) with its bus writer and relay running;
    equipment events go in through `core.sink`, as the adapters deliver them."""
    bus = configs(redis_url)
    core = FabCore(FabdConfig(service=ServiceConfig(state_directory=str(state_dir)),
                              redis=bus["redis"], store=bus["store"], bus=bus["bus"]))
    await core.start()
    tasks = [asyncio.create_task(core.bus.writer_loop()),
             asyncio.create_task(core.bus.relay_loop())]
    try:
        yield core
    finally:
        await stop_tasks(tasks)
        await core.bus.close()


async def test_a_start_the_track_in_checks_would_refuse_is_recorded_and_reported(
        redis_url, tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        bus: Bus = core.bus
        define_master_data(bus)                 # S0 LITHO R0, S1 ETCH R1, S2 LITHO R2
        mes = bus.mes
        mes.qualify("LITHO01", "R0", True)
        mes.qualify("LITHO01", "R2", True)
        for lot in ("OK", "GROUP", "STEP", "INHIBITED"):
            mes.create_lot(lot, "PO", "P-A", 25)   # all at S0 (LITHO, R0)
        starts = [("OK", "LITHO01", "R0"),         # qualified, right step: nothing to say
                  ("GROUP", "ETCH01", "R0"),       # an ETCH tool, not qualified for R0
                  ("STEP", "LITHO01", "R2")]       # R2 is step S2's recipe: out of sequence
        for lot, tool, recipe in starts:
            await core.sink.submit([dom.ProcessStarted(tool_id=tool, ts=2.0, lot_id=lot,
                                                      recipe_id=recipe)])
            await core.sink.submit([dom.ProcessCompleted(tool_id=tool, ts=3.0, lot_id=lot,
                                                        recipe_id=recipe)])
        mes.inhibit("LITHO01", "spc:LITHO01/CD", True, "CD out of control")
        await core.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=4.0, lot_id="INHIBITED",
                                                  recipe_id="R0")])
        # every start is recorded: the tool runs the lot, whatever fabd thinks of it
        assert mes.lots["INHIBITED"].state == PROCESSING
        assert all(mes.lots[lot].step_index == 1 and not mes.lots[lot].holds
                   for lot, _t, _r in starts)
        assert await bus.drain(5)
    unexpected = {e["data"]["lot_id"]: e["data"] for e in read_stream(redis_url, "fab:equipment")
                  if e["type"] == "process_unexpected"}
    assert set(unexpected) == {"GROUP", "STEP", "INHIBITED"}
    assert all(d["what"] == "started" for d in unexpected.values())
    group = unexpected["GROUP"]["reason"]
    assert "wrong_tool_group" in group and "not_qualified" in group and "ETCH01" in group
    step = unexpected["STEP"]["reason"]
    assert "out_of_sequence" in step and STEPS[0].step_id in step and "R2" in step
    assert "tool_inhibited" in unexpected["INHIBITED"]["reason"]
    assert "CD out of control" in unexpected["INHIBITED"]["reason"]


async def test_a_dispatch_list_that_empties_is_published_empty(redis_url, tmp_path) -> None:
    """An operator works from the latest dispatch_list of a tool. When its only lot was
    held (or the tool went down) fabd published nothing, so the latest list still offered
    the held lot; the emptied list is now published once."""
    async with running_core(redis_url, tmp_path) as core:
        define_master_data(core.bus)
        mes = core.bus.mes
        mes.qualify("LITHO01", "R0", True)
        mes.tool_connected("LITHO01", "hsms")
        mes.set_tool_state("LITHO01", "standby")
        mes.create_lot("L1", "PO", "P-A", 25)
        core._warm_dispatch()
        for _ in range(2):
            core.step_sync()
            core.step_dispatch()
        mes.hold("L1", "engineering", "eng")
        for _ in range(2):
            core.step_sync()
            core.step_dispatch()
        assert await core.bus.drain(5)
    lists = [e["data"]["lots"] for e in read_stream(redis_url, "fab:equipment")
             if e["type"] == "dispatch_list" and e["data"]["tool_id"] == "LITHO01"]
    assert lists == [["L1"], []]
