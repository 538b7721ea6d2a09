"""An X-bar subgroup is the next n points of its chart, so it can take wafers of two lots;
a hold_lot reaction on it must hold every lot that contributed, not just the lot whose point
closed the subgroup (the suspect wafers of the other lot went on unheld)."""

from __future__ import annotations

import time

from daemon.mes import HELD
from equipment import events as dom
from spc.config import ChartSpec, ChartType, Reaction
from tests.daemon.bus_support import define_master_data, read_stream
from tests.daemon.test_dispatch_advisory import running_core

CHART = "LITHO01/-/S0/CD"


async def test_an_xbar_violation_holds_every_lot_of_its_subgroup(redis_url, tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()                        # what the daemon does before READY
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)            # S0 runs on LITHO with R0
        for lot in ("L1", "L2", "L3", "OTHER"):
            mes.create_lot(lot, "PO", "P-A", 25)
        spc.register(CHART, spec=ChartSpec(chart_type=ChartType.XBAR_R, subgroup_size=5,
                                           center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        now = time.time()
        # one in-control subgroup of L3, then 3 wafers of L1 and 2 of L2, shifted by 3 σ
        lots = ["L3"] * 5 + ["L1"] * 3 + ["L2"] * 2
        values = [0.0, 0.1, -0.1, 0.05, -0.05] + [3.0] * 5
        core.sink.points([dom.ProcessPoint("LITHO01", "CD", x, now + i, lot)
                          for i, (x, lot) in enumerate(zip(values, lots, strict=True))])
        core.step_spc()
        assert {lot: (mes.lots[lot].state, [h.reason for h in mes.lots[lot].holds])
                for lot in ("L1", "L2", "L3", "OTHER")} == {
            "L1": (HELD, [f"spc:{CHART}"]), "L2": (HELD, [f"spc:{CHART}"]),
            "L3": ("queued", []), "OTHER": ("queued", [])}
        assert await core.bus.drain(5)
    held = [e["data"]["lot_id"] for e in read_stream(redis_url, "fab:lots")
            if e["type"] == "lot_held"]
    assert held == ["L1", "L2"]
    (violation,) = [e["data"] for e in read_stream(redis_url, "fab:quality")
                    if e["type"] == "spc_violation"]
    assert (violation["rule"], violation["action"], violation["lot_id"]) == (
        "nelson1", "hold_lot", "L1,L2")
    assert [p["lot_id"] for p in violation["points"]] == ["L1,L2"]


async def test_an_spc_hold_on_a_lot_merged_since_its_point_holds_the_lot_its_wafers_joined(
        redis_url, tmp_path) -> None:
    # L2's wafers measured out of control, then merged into L1 before the tick tested the
    # point: the hold was refused ("lot L2 is merged") and the suspect wafers went on in L1
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)
        for lot in ("L1", "L2", "OTHER"):
            mes.create_lot(lot, "PO", "P-A", 25)
        spc.register(CHART, spec=ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT),
                     tool_id="LITHO01")
        core.sink.points([dom.ProcessPoint("LITHO01", "CD", 9.0, time.time(), "L2")])
        mes.merge_lot("L2", "L1", "one carrier", "eng")
        core.step_spc()
        assert {lot: (mes.lots[lot].state, [h.reason for h in mes.lots[lot].holds])
                for lot in ("L1", "L2", "OTHER")} == {
            "L1": (HELD, [f"spc:{CHART}"]), "L2": ("merged", []), "OTHER": ("queued", [])}
        assert await core.bus.drain(5)
    held = [e["data"]["lot_id"] for e in read_stream(redis_url, "fab:lots")
            if e["type"] == "lot_held"]
    assert held == ["L1"]
