"""An exceeded queue-time window holds the lot once; the engineer's release is the disposition.

Before, the released lot was checked against the same expired deadline (recomputed from its
arrival at the step) and held again on the next start attempt, for ever. The release now
waives that window for this visit only; the next window is enforced as before.
"""

from __future__ import annotations

from daemon import events as ev
from daemon.fabsync import FabSync
from daemon.mes import HELD, QUEUED, MesState
from dispatch.enforce import Refusal, check_track_in

BODY = {r: f"{i:064x}" for i, r in enumerate(("CLEAN1", "OX1", "CLEAN2", "OX2"))}
T0 = 1_700_000_000.0


def fab():
    """CLEAN -> OX within 10 minutes, twice; one tool per group, everything verified."""
    now = [T0]
    mes = MesState(instance_id="test", clock=lambda: now[0])
    steps = [ev.RouteStep(step_id=f"S{i}", tool_group=g, recipe_id=r, recipe_version=1,
                          process_time_s=60, queue_time_limit_s=600 if g == "CLEAN" else 0)
             for i, (g, r) in enumerate(zip(("CLEAN", "OX", "CLEAN", "OX"), BODY, strict=True))]
    mes.define_route("RT", steps)
    mes.define_product("P1", "RT")
    for tool, group in (("CLN01", "CLEAN"), ("OX01", "OX")):
        mes.define_tool(tool, group)
        mes.tool_connected(tool, "hsms")
        mes.set_tool_state(tool, "standby")
    for recipe, body in BODY.items():
        mes.approve_recipe(recipe, 1, body)
        tool = "CLN01" if recipe.startswith("CLEAN") else "OX01"
        mes.qualify(tool, recipe, True)
        mes.recipe_report(tool, recipe, body)
    mes.create_lot("L1", "PO-1", "P1", 25)
    return mes, FabSync(mes), now


def try_start(mes, sync, tool, lot_id="L1"):
    """What the daemon does before PP-SELECT + START (daemon.core._start_lots)."""
    sync.sync()
    step = mes.step_of(mes.lots[lot_id])
    res = check_track_in(sync.model, lot_id, tool, step.recipe_id,
                         sync.model.minutes(mes.clock()), recipe_version=step.recipe_version)
    if res.ok:
        mes.track_in(lot_id, tool, step.recipe_id)
    elif res.action == "hold":
        mes.hold(lot_id, res.hold_reason, "enforcement",
                 "queue_time" if res.reason == Refusal.QUEUE_TIME_EXCEEDED else "")
    return res


def test_a_released_queue_time_hold_lets_the_lot_run_and_the_next_window_still_counts():
    mes, sync, now = fab()
    assert try_start(mes, sync, "CLN01").ok
    mes.track_out("L1", "CLN01")
    now[0] += 3600                                   # an hour at OX: the 10-minute window is gone
    res = try_start(mes, sync, "OX01")
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED and mes.lots["L1"].state == HELD
    mes.release("L1", "disposition: oxide thickness ok", "eng")
    assert mes.lots["L1"].state == QUEUED
    res = try_start(mes, sync, "OX01")               # not held again for the same window
    assert res.ok, res.detail
    mes.track_out("L1", "OX01")
    assert try_start(mes, sync, "CLN01").ok           # second CLEAN -> OX window
    mes.track_out("L1", "CLN01")
    now[0] += 3600
    res = try_start(mes, sync, "OX01")               # this one is enforced again
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED and mes.lots["L1"].state == HELD


def test_releasing_another_hold_does_not_waive_the_queue_time():
    mes, sync, now = fab()
    assert try_start(mes, sync, "CLN01").ok
    mes.track_out("L1", "CLN01")
    mes.hold("L1", "engineering", "eng")
    now[0] += 3600
    mes.release("L1", "done", "eng")
    res = try_start(mes, sync, "OX01")
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED


def rework_fab(strip_limit_s: float):
    """CLEAN -> OX within 10 minutes; a lot failing OX is stripped (rework route STRIP, whose
    own queue-time limit is strip_limit_s) and comes back to OX."""
    now = [T0]
    mes = MesState(instance_id="test", clock=lambda: now[0])
    body = {"CLEAN1": "a" * 64, "OX1": "b" * 64, "STRIP1": "c" * 64}
    mes.define_route("RW", [ev.RouteStep(step_id="STRIP", tool_group="WET", recipe_id="STRIP1",
                                         recipe_version=1, process_time_s=60,
                                         queue_time_limit_s=strip_limit_s)])
    mes.define_route("RT", [
        ev.RouteStep(step_id="CLEAN", tool_group="CLEAN", recipe_id="CLEAN1", recipe_version=1,
                     process_time_s=60, queue_time_limit_s=600),
        ev.RouteStep(step_id="OX", tool_group="OX", recipe_id="OX1", recipe_version=1,
                     process_time_s=60, rework_route_id="RW")])
    mes.define_product("P1", "RT")
    for tool, group, recipe in (("CLN01", "CLEAN", "CLEAN1"), ("OX01", "OX", "OX1"),
                                ("WET01", "WET", "STRIP1")):
        mes.define_tool(tool, group)
        mes.tool_connected(tool, "hsms")
        mes.set_tool_state(tool, "standby")
        mes.approve_recipe(recipe, 1, body[recipe])
        mes.qualify(tool, recipe, True)
        mes.recipe_report(tool, recipe, body[recipe])
    mes.create_lot("L1", "PO-1", "P1", 25)
    sync = FabSync(mes)
    assert try_start(mes, sync, "CLN01").ok
    mes.track_out("L1", "CLN01")
    assert try_start(mes, sync, "OX01").ok             # within CLEAN's 10 minutes
    mes.track_out("L1", "OX01", ok=False)              # non-conforming: stripped
    assert try_start(mes, sync, "WET01").ok
    mes.track_out("L1", "WET01")                       # back at OX
    assert mes.lots["L1"].step_id == "OX"
    return mes, sync, now


def test_a_lot_back_from_rework_is_not_held_for_the_window_it_already_met():
    # CLEAN's window closed when OX first started; the strip has none: no window at all now
    # (it used to open CLEAN's 10 minutes again from the return, and hold the lot)
    mes, sync, now = rework_fab(strip_limit_s=0)
    now[0] += 3600
    assert try_start(mes, sync, "OX01").ok
    assert mes.lots["L1"].holds == []


def test_a_lot_back_from_rework_must_start_within_the_rework_routes_last_window():
    # the strip's own 5-minute limit runs to the step the lot returns to
    mes, sync, now = rework_fab(strip_limit_s=300)
    now[0] += 400
    res = try_start(mes, sync, "OX01")
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED
    assert mes.lots["L1"].state == HELD and mes.lots["L1"].holds[0].kind == "queue_time"


def test_a_lot_stored_by_an_older_fabd_keeps_its_window():
    # qt_limit_s not recorded (-1): the route's previous step decides, as it did before
    mes, sync, now = fab()
    assert try_start(mes, sync, "CLN01").ok
    mes.track_out("L1", "CLN01")
    mes.lots["L1"].qt_limit_s = -1.0
    now[0] += 3600
    assert try_start(mes, sync, "OX01").reason == Refusal.QUEUE_TIME_EXCEEDED


def l2_at_ox(mes, sync, now, after_s: float) -> None:
    """After `after_s`, lot L2 (5 wafers) runs CLEAN and arrives at OX, its 10-minute
    window running."""
    now[0] += after_s
    mes.create_lot("L2", "PO-1", "P1", 5)
    assert try_start(mes, sync, "CLN01", "L2").ok
    mes.track_out("L2", "CLN01")


def test_wafers_merged_into_a_lot_back_from_rework_keep_their_queue_time_window():
    # L1 is back at OX from the strip (no window); L2 comes from CLEAN, due at OX within 10
    # minutes, and is merged into L1: its wafers must still start OX in time (the merged lot
    # took L1's "no window" and ran them an hour late unchecked)
    mes, sync, now = rework_fab(strip_limit_s=0)
    l2_at_ox(mes, sync, now, after_s=10)
    mes.merge_lot("L2", "L1", "one carrier", "eng")
    now[0] += 3600
    res = try_start(mes, sync, "OX01")
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED
    assert mes.lots["L1"].state == HELD and mes.lots["L1"].wafers == 30


def test_a_lot_merged_into_one_back_from_rework_does_not_bring_a_window_it_never_had():
    # the reverse: L1 (back from the strip, no window) arrived first; L2 from CLEAN has 10
    # minutes from its own arrival, not from L1's
    mes, sync, now = rework_fab(strip_limit_s=0)
    l2_at_ox(mes, sync, now, after_s=500)
    mes.merge_lot("L1", "L2", "one carrier", "eng")
    now[0] += 300                                     # 5 minutes after L2 left CLEAN
    assert try_start(mes, sync, "OX01", "L2").ok
