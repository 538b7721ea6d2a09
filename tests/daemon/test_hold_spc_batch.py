"""A batch tool traces a batch under its lot ids comma-separated (e.g. "B1,B2"): an SPC
hold on such a point holds every lot of the batch, and each lot's process summary has the
traced values. Both were lost: the hold looked up a lot named "B1,B2" (none), the chart had
no step, and the summaries were kept under the batch's name."""

from __future__ import annotations

import time

from daemon.mes import HELD
from equipment import events as dom
from spc.config import ChartSpec, Reaction
from tests.daemon.bus_support import define_master_data, read_stream
from tests.daemon.test_dispatch_advisory import running_core


async def test_an_spc_hold_on_a_batch_point_holds_every_lot_of_the_batch(redis_url,
                                                                         tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()                        # what the daemon does before READY
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)            # S0 runs on LITHO with R0
        mes.qualify("LITHO01", "R0", True)
        for lot in ("B1", "B2", "OTHER"):
            mes.create_lot(lot, "PO", "P-A", 25)
        now = time.time()
        await core.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=now, lot_id="B1,B2",
                                                   recipe_id="R0")])
        spc.register("LITHO01/-/S0/CD", spec=ChartSpec(center=0.0, sigma=1.0,
                                                       reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        core.sink.points([dom.ProcessPoint("LITHO01", "CD", 9.0, now, "B1,B2")])
        core.step_spc()
        await core.sink.submit([dom.ProcessCompleted(tool_id="LITHO01", ts=now + 1,
                                                     lot_id="B1,B2", recipe_id="R0")])
        assert {lot: (mes.lots[lot].state, [h.reason for h in mes.lots[lot].holds])
                for lot in ("B1", "B2", "OTHER")} == {
            "B1": (HELD, ["spc:LITHO01/-/S0/CD"]), "B2": (HELD, ["spc:LITHO01/-/S0/CD"]),
            "OTHER": ("queued", [])}
        assert await core.bus.drain(5)
    held = [e["data"]["lot_id"] for e in read_stream(redis_url, "fab:lots")
            if e["type"] == "lot_held"]
    assert held == ["B1", "B2"]
    summaries = {e["data"]["lot_id"]: [(p["parameter"], p["n"], p["max"])
                                       for p in e["data"]["parameters"]]
                 for e in read_stream(redis_url, "fab:quality")
                 if e["type"] == "process_data_summary"}
    assert summaries == {"B1": [("CD", 1, 9.0)], "B2": [("CD", 1, 9.0)]}
