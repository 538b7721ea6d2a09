"""FabSync keeps the dispatch model in step with the state of record (daemon.fabsync).

The daemon dispatches and enforces on the model FabSync builds from MesState
(daemon.core: step_sync, then step_dispatch; _start_lots syncs again before
enforcement): these tests go through that same path.
"""

from __future__ import annotations

from daemon import events as ev
from daemon.fabsync import FabSync
from daemon.mes import MesState
from dispatch.enforce import Refusal, check_track_in
from dispatch.scorer import Dispatcher

T0 = 1_700_000_000.0


def fab() -> tuple[MesState, FabSync]:
    """Route RT: ETCH (recipe E1) then DEP (D1); ETCH01 and DEP01 up, qualified for both."""
    mes = MesState(instance_id="test", clock=lambda: T0)
    mes.define_route("RT", [
        ev.RouteStep(step_id="S1", tool_group="ETCH", recipe_id="E1", recipe_version=1,
                     process_time_s=60),
        ev.RouteStep(step_id="S2", tool_group="DEP", recipe_id="D1", recipe_version=1,
                     process_time_s=60)])
    mes.define_product("P", "RT")
    for tool, group in (("ETCH01", "ETCH"), ("DEP01", "DEP")):
        mes.define_tool(tool, group)
        mes.tool_connected(tool, "hsms")
        mes.set_tool_state(tool, "standby")
        for recipe in ("E1", "D1"):
            mes.qualify(tool, recipe, True)
    sync = FabSync(mes)
    sync.sync()
    return mes, sync


def test_a_tool_moved_to_another_tool_group_is_dispatched_and_enforced_as_a_member_of_it():
    """ERP DefineTool moves ETCH01 to DEP: it must not be given (or pass enforcement for)
    the ETCH lot any more. FabSync used to update the tool in place and keep its old group."""
    mes, sync = fab()
    mes.create_lot("L1", "PO", "P", 25)             # waits at S1 (ETCH)
    mes.define_tool("ETCH01", "DEP")
    sync.sync()
    model = sync.model
    assert Dispatcher(model).assign(model.minutes(T0)) == {}
    res = check_track_in(model, "L1", "ETCH01", "E1", model.minutes(T0), recipe_version=1)
    assert res.reason == Refusal.WRONG_TOOL_GROUP, res


def test_events_of_a_tool_the_erp_has_not_defined_do_not_rebuild_the_model():
    """A configured tool talks before DefineTool gives it a group: it is not in the model
    (no group, nothing to dispatch). Each of its events used to rebuild the whole model (and
    the dispatcher, and log "dispatch model built") on the next tick, for as long as it
    talked; once the ERP defines it, it joins the model."""
    mes, sync = fab()
    built = sync.generation
    for k in range(3):
        mes.tool_connected("NEW01", "hsms")
        mes.set_tool_state("NEW01", "productive" if k % 2 else "standby")
        assert not sync.sync()
    assert sync.generation == built and "NEW01" not in sync.model.tool_index
    mes.define_tool("NEW01", "ETCH")
    assert sync.sync() and "NEW01" in sync.model.tool_index


def test_a_queue_time_limit_on_a_routes_last_step_does_not_take_the_route_out_of_dispatch():
    """The state of record accepts a limit on the last step (a window nothing in the route
    closes, so nothing enforces it); the model refused the whole route ("route ... not
    dispatchable", logged once), and the lots on it were never dispatched."""
    mes, sync = fab()
    mes.define_route("RW", [ev.RouteStep(step_id="RW1", tool_group="ETCH", recipe_id="E1",
                                         recipe_version=1, process_time_s=60,
                                         queue_time_limit_s=600)])
    mes.define_product("PW", "RW")
    mes.create_lot("L1", "PO", "PW", 25)
    sync.sync()
    model = sync.model
    assert Dispatcher(model).assign(model.minutes(T0)) == {"ETCH01": ["L1"]}


def test_an_expedite_from_the_erp_moves_the_lot_ahead_from_the_next_tick():
    """update_lot raises L2's priority to super hot: the next dispatch gives it ETCH01
    before L1, which came first."""
    mes, sync = fab()
    mes.create_lot("L1", "PO", "P", 25)
    mes.clock = lambda: T0 + 600
    mes.create_lot("L2", "PO", "P", 25)
    sync.sync()
    model = sync.model
    now = model.minutes(T0 + 600)
    assert Dispatcher(model).assign(now) == {"ETCH01": ["L1"]}   # first come
    mes.update_lot("L2", "customer expedite", "planner", priority=95)
    sync.sync()
    model = sync.model
    assert Dispatcher(model).assign(now) == {"ETCH01": ["L2"]}


def test_a_running_lot_keeps_the_tool_busy_from_its_start_for_its_process_time_only():
    """The model's tool was busy from the lot's arrival at the step (not its start), and
    every later change to the running lot (a hold, update_lot, scrap_wafers) re-added it
    and added another process time: the dispatcher saw the tool busy for hours longer."""
    mes, sync = fab()
    mes.create_lot("L1", "PO", "P", 25)           # arrives at S1 at T0
    clock = [T0 + 3600.0]                         # starts an hour later
    mes.clock = lambda: clock[0]
    mes.track_in("L1", "ETCH01", "E1")
    sync.sync()
    model = sync.model
    t = model.tool_index["ETCH01"]

    def busy_until() -> float:
        return float(model._tools["tool_busy_until_min"][t])

    end = model.minutes(T0 + 3600.0 + 60)        # its start plus S1's 60 s
    assert busy_until() == end
    runs = int(model._tools["tool_setup_runs"][t])
    mes.update_lot("L1", "expedite", "erp", priority=90)
    mes.hold("L1", "engineer: check", "eng")
    sync.sync()
    assert busy_until() == end and int(model._tools["tool_setup_runs"][t]) == runs
    assert model.running_tool("L1") == "ETCH01"
