"""A lot the tool runs while the MES has it on hold: the record follows the tool.

A hold can land while fabd's START is on its way to the tool, or an operator can start a
held lot at the tool. Either way the tool runs the lot; if the MES refused to record that
start, the completion would be dropped as well and the lot, once released, would run the
same step again. The start is recorded (and reported as unexpected), and the hold applies
when the step ends.
"""

from __future__ import annotations

import pytest

from daemon.mes import HELD, PROCESSING, QUEUED, IllegalTransition, MesState
from equipment import events as dom
from tests.daemon.bus_support import STEPS, define_master_data, read_stream, running_bus


async def test_a_held_lot_the_tool_runs_is_recorded_and_stays_held_after_the_step(
        redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        bus.mes.hold("L1", "engineering", "eng")
        await bus.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=2.0, lot_id="L1",
                                                  recipe_id=STEPS[0].recipe_id)])
        lot = bus.mes.lots["L1"]
        assert lot.state == PROCESSING and lot.tool_id == "LITHO01"
        await bus.sink.submit([dom.ProcessCompleted(tool_id="LITHO01", ts=3.0, lot_id="L1",
                                                    recipe_id=STEPS[0].recipe_id)])
        # the step is done once, the lot waits at the next step, still held
        assert lot.state == HELD and lot.step_index == 1
        assert [h.reason for h in lot.holds] == ["engineering"]
        assert await bus.drain(5)
    kinds = [(e["type"], e["data"].get("what")) for e in read_stream(redis_url, "fab:equipment")]
    assert ("process_unexpected", "started") in kinds
    unexpected = [e["data"] for e in read_stream(redis_url, "fab:equipment")
                  if e["type"] == "process_unexpected"]
    assert "held" in unexpected[0]["reason"] and "engineering" in unexpected[0]["reason"]
    lots = [e["type"] for e in read_stream(redis_url, "fab:lots") if e["data"]["lot_id"] == "L1"]
    assert lots.count("lot_tracked_in") == 1 and lots.count("lot_tracked_out") == 1


def test_a_start_of_a_held_lot_is_refused_unless_the_tool_already_runs_it() -> None:
    mes = MesState(instance_id="t", clock=lambda: 1_700_000_000.0)
    mes.define_route("RT", STEPS)
    mes.define_product("P", "RT")
    mes.define_tool("LITHO01", "LITHO")
    mes.create_lot("L1", "PO", "P", 25)
    mes.hold("L1", "spc", "eng")
    with pytest.raises(IllegalTransition):
        mes.track_in("L1", "LITHO01", STEPS[0].recipe_id)       # fabd does not start it
    mes.track_in("L1", "LITHO01", STEPS[0].recipe_id, held_ok=True)   # the tool did
    mes.track_out("L1", "LITHO01")
    assert mes.lots["L1"].state == HELD
    mes.release("L1", "disposition: ok", "eng")
    assert mes.lots["L1"].state == QUEUED and mes.lots["L1"].step_index == 1
