"""A lot's process-data summary leaves out values that are not numbers.

A tool that reports NaN (an F4 of a sensor that dropped out) or infinity made the lot's
mean, min or max NaN, published as JSON null, which the schema's numbers reject and an
ERP yield calculation chokes on.
"""

from __future__ import annotations

import json

from equipment import events as dom
from tests.daemon.bus_support import STEPS, define_master_data, read_stream, running_bus


async def test_nan_and_infinite_values_are_left_out_of_the_summary(redis_url, tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        r0 = STEPS[0].recipe_id
        await bus.sink.submit([dom.ProcessStarted(tool_id="LITHO01", ts=1.0, lot_id="L1",
                                                  recipe_id=r0)])
        bus.sink.points([dom.ProcessPoint("LITHO01", "CD", v, 2.0, "L1")
                         for v in (1.0, float("nan"), 3.0, float("inf"))])
        await bus.sink.submit([dom.ProcessCompleted(
            tool_id="LITHO01", ts=3.0, lot_id="L1", recipe_id=r0,
            parameters={"DOSE": float("nan"), "FOCUS": 0.5})])
        assert await bus.drain(5)
    (summary,) = [e for e in read_stream(redis_url, "fab:quality")
                  if e["type"] == "process_data_summary"]
    params = {p["parameter"]: p for p in summary["data"]["parameters"]}
    assert set(params) == {"CD", "FOCUS"}            # DOSE had no number at all
    assert (params["CD"]["n"], params["CD"]["mean"], params["CD"]["max"]) == (2, 2.0, 3.0)
    assert "null" not in json.dumps(summary["data"])
