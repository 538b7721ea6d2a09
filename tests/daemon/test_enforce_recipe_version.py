"""Track-in enforcement on the model FabSync keeps: the recipe version the route names (not
the newest approved one), and qualifications as they stand now.

The daemon checks a start on the dispatch model that FabSync builds from the state of
record (daemon.core._start_lots): these tests go through that same path.
"""

from __future__ import annotations

from daemon import events as ev
from daemon.fabsync import FabSync
from daemon.mes import MesState
from dispatch.enforce import Refusal, check_track_in
from dispatch.model import FabModel, StepSpec

V1 = "a1" * 32  # body sha256 of COAT1 v1
V2 = "b2" * 32  # body sha256 of COAT1 v2


def fab() -> tuple[MesState, FabSync]:
    """One LITHO step running COAT1 v1; LITHO01 is up, qualified, and holds the v1 body."""
    mes = MesState(instance_id="test", clock=lambda: 1_700_000_000.0)
    mes.define_route("RT", [ev.RouteStep(step_id="COAT", tool_group="LITHO", recipe_id="COAT1",
                                         recipe_version=1, process_time_s=60)])
    mes.define_product("P1", "RT")
    mes.define_tool("LITHO01", "LITHO")
    mes.tool_connected("LITHO01", "hsms")
    mes.set_tool_state("LITHO01", "standby")
    mes.qualify("LITHO01", "COAT1", True)
    mes.approve_recipe("COAT1", 1, V1)
    mes.create_lot("L1", "PO-1", "P1", 25)
    sync = FabSync(mes)
    sync.sync()
    return mes, sync


def start(mes: MesState, sync: FabSync):
    """What the daemon asks before PP-SELECT + START (the step's recipe and version)."""
    sync.sync()
    step = mes.step_of(mes.lots["L1"])
    model = sync.model
    return check_track_in(model, "L1", "LITHO01", step.recipe_id, model.minutes(mes.clock()),
                          recipe_version=step.recipe_version)


def test_the_routes_version_verified_on_the_tool_runs() -> None:
    mes, sync = fab()
    mes.recipe_report("LITHO01", "COAT1", V1)
    assert start(mes, sync).ok


def test_a_newer_approved_body_does_not_run_at_a_step_that_names_the_older_version() -> None:
    """ERP approves COAT1 v2 (an engineering change) but the route still says v1."""
    mes, sync = fab()
    mes.approve_recipe("COAT1", 2, V2)
    mes.recipe_report("LITHO01", "COAT1", V2)  # the tool was loaded with the v2 body
    res = start(mes, sync)
    assert not res.ok
    assert res.reason == Refusal.RECIPE_VERSION_MISMATCH
    assert "v1" in res.detail and "v2" in res.detail


def test_the_routes_version_still_runs_after_a_newer_one_is_approved() -> None:
    """v2 approved ahead of the route change: a tool holding v1 keeps running the v1 step."""
    mes, sync = fab()
    mes.approve_recipe("COAT1", 2, V2)
    mes.recipe_report("LITHO01", "COAT1", V1)
    res = start(mes, sync)
    assert res.ok, res.detail


def test_a_revoked_qualification_stops_the_next_start() -> None:
    mes, sync = fab()
    mes.recipe_report("LITHO01", "COAT1", V1)
    assert start(mes, sync).ok
    mes.qualify("LITHO01", "COAT1", False)     # ERP: LITHO01 is no longer qualified for COAT1
    res = start(mes, sync)
    assert not res.ok and res.reason == Refusal.NOT_QUALIFIED
    assert "LITHO01" in res.detail and "COAT1" in res.detail
    mes.qualify("LITHO01", "COAT1", True)      # requalified
    assert start(mes, sync).ok


def test_on_the_model_alone_the_body_on_record_must_be_the_steps_version() -> None:
    m = FabModel()
    m.add_recipe("R", 2, V2)  # v2 approved, with its body
    m.add_route("RT", [StepSpec(group="G", recipe="R", recipe_version=1, ptime_min=10.0)])
    m.add_product("P", "RT")
    m.add_tool("T", "G", ["R"])
    m.record_tool_recipe("T", "R", V2, 2)
    m.add_lot("L", "P")
    res = check_track_in(m, "L", "T", "R", 0.0, recipe_version=1)
    assert res.reason == Refusal.RECIPE_VERSION_MISMATCH
    assert "v1" in res.detail and "v2" in res.detail
