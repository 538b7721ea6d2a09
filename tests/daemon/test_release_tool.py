"""An SPC reaction plan inhibits a tool; the engineer's disposition (ERP release_tool) lifts it.

Before, nothing could lift an SPC inhibit: the tool was out of production for good.
"""

from __future__ import annotations

import json

import redis as redis_sync

from daemon.mes import IllegalTransition
from spc.config import ChartSpec
from tests.daemon.bus_support import define_master_data, read_stream, running_bus, send_commands
from tests.daemon.test_dispatch_advisory import running_core
from tests.support import eventually


def dead_letters(url: str) -> list[dict]:
    r = redis_sync.Redis.from_url(url, decode_responses=True)
    try:
        return [fields for _id, fields in r.xrange("fab:erp:dead")]
    finally:
        r.close()


def release(command_id: str, tool_id: str, inhibit: str = "") -> dict:
    return {"type": "release_tool", "command_id": command_id, "tool_id": tool_id,
            "inhibit": inhibit, "reason": "recalibrated", "by": "eng-kim"}


async def test_release_tool_lifts_an_spc_inhibit_and_refuses_what_it_cannot(redis_url,
                                                                           tmp_path) -> None:
    async with running_bus(redis_url, tmp_path) as bus:
        define_master_data(bus)
        bus.mes.inhibit("LITHO01", "spc:LITHO01/CD", True, "CD out of control")
        bus.mes.inhibit("LITHO01", "recipe:R0", True, "recipe body matches no approved version")
        send_commands(redis_url, "fab", [
            release("r1", "LITHO01", "recipe:R0"),      # lifts itself when the body is fixed
            release("r2", "LITHO01", "spc:LITHO01/THK"),  # no such inhibit
            release("r3", "NOPE01"),                    # no such tool
            release("r4", "LITHO01", "spc:LITHO01/CD"),
        ])
        await eventually(lambda: "spc:LITHO01/CD" not in bus.mes.tools["LITHO01"].inhibits,
                         what="the SPC inhibit lifted")
        await eventually(lambda: bus.erp.dead_total == 3, what="three dead letters")
        assert list(bus.mes.tools["LITHO01"].inhibits) == ["recipe:R0"]
        assert await bus.drain(5)
    dead = {json.loads(d["cmd"])["command_id"]: d for d in dead_letters(redis_url)}
    assert "approved body" in dead["r1"]["reason"]
    assert "spc:LITHO01/CD" in dead["r2"]["reason"] and "recipe:R0" in dead["r2"]["reason"]
    assert dead["r3"]["code"] == "unknown_tool"
    lifted = [e["data"] for e in read_stream(redis_url, "fab:equipment")
              if e["type"] == "tool_inhibit_changed" and not e["data"]["active"]]
    assert [(x["inhibit"], "eng-kim" in x["reason"]) for x in lifted] == [("spc:LITHO01/CD", True)]


async def test_a_released_chart_starts_its_run_rules_afresh(redis_url, tmp_path) -> None:
    """Nine points on one side trip the chart; after the release the tenth, from the old
    run, must not trip it again."""
    async with running_core(redis_url, tmp_path) as core:
        core._warm_spc()                        # what the daemon does before READY
        mes, spc = core.bus.mes, core.spc
        define_master_data(core.bus)
        key = "LITHO01/-/S0/CD"
        cid = spc.register(key, spec=ChartSpec(center=0.0, sigma=1.0), tool_id="LITHO01")
        for i in range(9):
            spc.add(cid, 0.5, float(i))
        core.step_spc()
        mes.inhibit("LITHO01", f"spc:{key}", True, "nine in a row")   # the reaction plan
        core.step_spc()
        mes.release_tool("LITHO01", "recalibrated", "eng-kim")
        try:
            mes.release_tool("LITHO01", "again", "eng-kim")
        except IllegalTransition as exc:
            assert "no inhibit" in str(exc)
        spc.add(cid, 0.5, 10.0)
        core.step_spc()
        assert await core.bus.drain(5)
    tests = [e["data"]["rule"] for e in read_stream(redis_url, "fab:quality")
             if e["type"] == "spc_violation"]
    assert len(tests) == 1          # the ninth point; not the tenth after the release
