"""Data that arrives late with its own time (an MQTT broker's backlog after an outage) is
charted at the step its lot ran then and holds that lot: it was charted at the step the lot
had moved on to, or under the lot processing when it arrived."""

from __future__ import annotations

import time

import pytest

from daemon.mes import HELD
from equipment import events as dom
from spc.config import ChartSpec, Reaction
from spc.errors import UnknownChartError
from tests.daemon.bus_support import define_master_data
from tests.daemon.test_dispatch_advisory import running_core


async def test_a_late_point_is_charted_at_the_step_its_lot_ran_then(redis_url, tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)            # S0 on LITHO, S1 on ETCH
        mes.qualify("LITHO01", "R0", True)
        for lot in ("L1", "L2"):
            mes.create_lot(lot, "PO", "P-A", 25)
        t0 = time.time() - 100
        await core.sink.submit([
            dom.ProcessStarted(tool_id="LITHO01", ts=t0, lot_id="L1", recipe_id="R0"),
            dom.ProcessCompleted(tool_id="LITHO01", ts=t0 + 30, lot_id="L1", recipe_id="R0"),
            dom.ProcessStarted(tool_id="LITHO01", ts=t0 + 60, lot_id="L2", recipe_id="R0")])
        assert (mes.lots["L1"].step_id, mes.lots["L2"].state) == ("S1", "processing")
        spc.register("LITHO01/-/S0/CD", spec=ChartSpec(center=0.0, sigma=1.0,
                                                       reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        # What the MQTT session asks for a sample from its backlog, taken during L1's run
        lot = core.lot_at("LITHO01", t0 + 10)
        assert (lot, core.lot_at("LITHO01", t0 + 45)) == ("L1", "")
        core.sink.points([dom.ProcessPoint("LITHO01", "CD", 9.0, t0 + 10, lot)])
        core.step_spc()
        with pytest.raises(UnknownChartError):        # not at the step L1 is at now
            spc.version("LITHO01/-/S1/CD")
        assert [h.reason for h in mes.lots["L1"].holds] == ["spc:LITHO01/-/S0/CD"]
        assert mes.lots["L1"].state == HELD
        assert mes.lots["L2"].holds == []


async def test_an_spc_hold_reaches_the_wafers_split_off_since_the_run(redis_url,
                                                                     tmp_path) -> None:
    """An SPC hold on a lot split after the run its data came from held the parent only:
    the child carried the suspect wafers on. A lot split off before that run did not run
    it and is not held."""
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)
        mes.qualify("LITHO01", "R0", True)
        mes.create_lot("L1", "PO", "P-A", 25)
        mes.split_lot("L1", "C0", 5, "engineering sample", "erp")    # before the run
        t0 = time.time() + 0.001
        await core.sink.submit([
            dom.ProcessStarted(tool_id="LITHO01", ts=t0, lot_id="L1", recipe_id="R0"),
            dom.ProcessCompleted(tool_id="LITHO01", ts=t0 + 0.01, lot_id="L1",
                                 recipe_id="R0")])
        mes.split_lot("L1", "C1", 5, "customer split", "erp")        # after it, at S1
        mes.split_lot("C1", "C2", 2, "customer split", "erp")        # and off that one
        spc.register("LITHO01/-/S0/CD", spec=ChartSpec(center=0.0, sigma=1.0,
                                                       reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        core.sink.points([dom.ProcessPoint("LITHO01", "CD", 9.0, t0 + 0.005, "L1")])
        core.step_spc()
        held = {lot: [h.reason for h in mes.lots[lot].holds] for lot in ("L1", "C0", "C1", "C2")}
        assert held == {"L1": ["spc:LITHO01/-/S0/CD"], "C0": [], "C1": ["spc:LITHO01/-/S0/CD"],
                        "C2": ["spc:LITHO01/-/S0/CD"]}
