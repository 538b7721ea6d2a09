"""A batch tool reports one completion for the batch, its lot ids comma-separated, with the
batch's measured parameters: one run, so one point on the chart. Each lot of the batch
used to get its own copy of the point, so a batch of two counted twice on the run rules
(nine in a row after five runs) and the copies, equal, broke every trend."""

from __future__ import annotations

import time

from equipment import events as dom
from spc.config import ChartSpec, Reaction
from tests.daemon.bus_support import define_master_data, read_stream
from tests.daemon.test_dispatch_advisory import running_core

CHART = "LITHO01/-/S0/THK"


async def test_a_batch_completion_is_one_point_on_its_chart(redis_url, tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()                        # what the daemon does before READY
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)            # S0 runs on LITHO with R0
        mes.qualify("LITHO01", "R0", True)
        spc.register(CHART, spec=ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        now = time.time()
        for run in range(5):                    # five batch runs of two lots, above centre
            batch = f"B{2 * run},B{2 * run + 1}"
            for lot in batch.split(","):
                mes.create_lot(lot, "PO", "P-A", 25)
            await core.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=now + run,
                                                       lot_id=batch, recipe_id="R0")])
            await core.sink.submit([dom.ProcessCompleted(
                tool_id="LITHO01", ts=now + run + 0.5, lot_id=batch, recipe_id="R0",
                parameters={"THK": 0.5 + 0.1 * run})])
            core.step_spc()
        assert spc.points_evaluated_total == 5
        # four more runs of one lot: the ninth run in a row above the centre holds its lot
        for run in range(5, 9):
            mes.create_lot(f"L{run}", "PO", "P-A", 25)
            await core.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=now + run,
                                                       lot_id=f"L{run}", recipe_id="R0")])
            await core.sink.submit([dom.ProcessCompleted(
                tool_id="LITHO01", ts=now + run + 0.5, lot_id=f"L{run}", recipe_id="R0",
                parameters={"THK": 0.5})])
            core.step_spc()
        assert await core.bus.drain(5)
    violations = [e["data"] for e in read_stream(redis_url, "fab:quality")
                  if e["type"] == "spc_violation"]
    assert [(v["rule"], v["lot_id"]) for v in violations] == [("nelson2", "L8")]
    assert [p["lot_id"] for p in violations[0]["points"]] == [
        "B0,B1", "B2,B3", "B4,B5", "B6,B7", "B8,B9", "L5", "L6", "L7", "L8"]


async def test_a_completion_sent_again_is_not_charted_again(redis_url, tmp_path) -> None:
    """A tool sends a completion again after a reconnect (spool replay); the lot has moved on
    to S1 by then. The copy was charted again, and under S1 (the lot's step by then): a chart
    of a step the lot never ran, and in a step's history a point of another step."""
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)
        mes.qualify("LITHO01", "R0", True)
        spc.register(CHART, spec=ChartSpec(center=0.0, sigma=1.0), tool_id="LITHO01")
        for lot in ("L1", "L2"):
            mes.create_lot(lot, "PO", "P-A", 25)
        now = time.time()
        end = dom.ProcessCompleted(tool_id="LITHO01", ts=now + 1, lot_id="L1", recipe_id="R0",
                                   parameters={"THK": 0.5})
        await core.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=now, lot_id="L1",
                                                   recipe_id="R0")])
        await core.sink.submit([end])
        await core.sink.submit([end])           # the same completion again
        # a start and its end in one delivery: charted (the start counts though not applied)
        await core.sink.submit([
            dom.ProcessStarted(tool_id="LITHO01", ts=now + 2, lot_id="L2", recipe_id="R0"),
            dom.ProcessCompleted(tool_id="LITHO01", ts=now + 3, lot_id="L2", recipe_id="R0",
                                 parameters={"THK": 0.7})])
        core.step_spc()
        assert mes.lots["L1"].step_id == mes.lots["L2"].step_id == "S1"
        assert [spc.key_of(c) for c in range(len(spc))] == [CHART]
        assert spc.points_evaluated_total == 2
        assert await core.bus.drain(5)
    unexpected = [(e["data"]["lot_id"], e["data"]["what"])
                  for e in read_stream(redis_url, "fab:equipment")
                  if e["type"] == "process_unexpected"]
    assert unexpected == [("L1", "completed")]
