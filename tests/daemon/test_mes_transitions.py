"""MES state of record: lot flow, rework and return, holds, track-in enforcement, recipe checks."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from daemon import events as ev
from daemon.mes import (
    COMPLETED,
    HELD,
    PROCESSING,
    QUEUED,
    IllegalTransition,
    MesError,
    MesState,
)

CHECKSUM = "ab" * 32


def make_state() -> MesState:
    mes = MesState(instance_id="test", clock=lambda: 1_700_000_000.0)
    mes.define_route("RW-STRIP", [ev.RouteStep(step_id="STRIP", tool_group="WET",
                                               recipe_id="STRIP1", recipe_version=1,
                                               process_time_s=30)])
    mes.define_route("RT", [
        ev.RouteStep(step_id="COAT", tool_group="LITHO", recipe_id="COAT1", recipe_version=1,
                     process_time_s=60, rework_route_id="RW-STRIP"),
        ev.RouteStep(step_id="ETCH", tool_group="ETCH", recipe_id="ETCH1", recipe_version=2,
                     process_time_s=90),
    ])
    mes.define_product("P1", "RT")
    mes.define_tool("LITHO01", "LITHO")
    mes.define_tool("ETCH01", "ETCH")
    mes.define_tool("WET01", "WET")
    return mes


def events_of(mes: MesState) -> list[tuple[str, str, int, dict]]:
    return [(row[1], row[3], row[2], json.loads(row[6])) for row in mes.take_batch().events]


def test_lot_goes_through_rework_and_returns_to_the_step_that_failed() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01", ok=False)  # non-conforming: rework route
    assert (mes.lots["L1"].route_id, mes.lots["L1"].step_id) == ("RW-STRIP", "STRIP")
    mes.track_in("L1", "WET01")
    mes.track_out("L1", "WET01")
    assert (mes.lots["L1"].route_id, mes.lots["L1"].step_id) == ("RT", "COAT")  # redo the step
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")
    mes.track_in("L1", "ETCH01")
    mes.track_out("L1", "ETCH01")
    assert mes.lots["L1"].state == COMPLETED
    types = [t for _s, t, _n, _d in events_of(mes)]
    assert types == ["lot_created", "lot_tracked_in", "lot_tracked_out", "lot_reworked",
                     "lot_tracked_in", "lot_tracked_out", "lot_moved",
                     "lot_tracked_in", "lot_tracked_out", "lot_moved",
                     "lot_tracked_in", "lot_tracked_out", "lot_completed"]
    assert mes.wip_counts() == []


def test_seq_counts_each_stream_without_gaps() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO", "P1", 10)
    mes.set_tool_state("ETCH01", "productive")
    mes.create_lot("L2", "PO", "P1", 10)
    mes.alarm("ETCH01", 7, True, "chiller")
    rows = events_of(mes)
    assert [(s, n) for s, _t, n, _d in rows] == [("lots", 1), ("equipment", 1), ("lots", 2),
                                                  ("equipment", 2)]


def test_hold_while_processing_keeps_the_lot_held_at_its_next_step() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.hold("L1", "spc", "engineer")
    assert mes.lots["L1"].state == PROCESSING
    mes.track_out("L1", "LITHO01")
    assert (mes.lots["L1"].state, mes.lots["L1"].step_id) == (HELD, "ETCH")
    mes.release("L1", "checked", "engineer")
    assert mes.lots["L1"].state == QUEUED


def test_illegal_transitions_change_nothing() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO", "P1", 25)
    mes.take_batch()
    with pytest.raises(IllegalTransition):
        mes.release("L1", "why", "me")  # not held
    with pytest.raises(IllegalTransition):
        mes.track_out("L1", "LITHO01")  # not processing
    mes.hold("L1", "q", "me")
    with pytest.raises(IllegalTransition):
        mes.track_in("L1", "LITHO01")  # held
    assert [t for _s, t, _n, _d in events_of(mes)] == ["lot_held"]
    assert mes.lots["L1"].state == HELD


def test_track_in_enforcement_names_the_reason() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO", "P1", 25)
    assert mes.check_track_in("L1", "ETCH01")[0] == "wrong_tool_group"
    assert mes.check_track_in("L1", "LITHO01")[0] == "not_qualified"
    mes.qualify("LITHO01", "COAT1", True)
    assert mes.check_track_in("L1", "LITHO01")[0] == "recipe_not_approved"
    mes.approve_recipe("COAT1", 1, CHECKSUM)
    assert mes.check_track_in("L1", "LITHO01") is None
    # The tool reports a body nobody approved: mismatch, inhibit, refused.
    assert mes.recipe_report("LITHO01", "COAT1", "cd" * 32) is False
    assert mes.check_track_in("L1", "LITHO01")[0] == "recipe_mismatch"
    assert "recipe:COAT1" in mes.tools["LITHO01"].inhibits
    # The right body clears the inhibit.
    assert mes.recipe_report("LITHO01", "COAT1", CHECKSUM) is True
    assert mes.check_track_in("L1", "LITHO01") is None
    types = [t for _s, t, _n, _d in events_of(mes)]
    assert types[-4:] == ["recipe_mismatch", "tool_inhibit_changed", "recipe_verified",
                          "tool_inhibit_changed"]


def test_wip_snapshot_covers_the_last_lots_seq() -> None:
    mes = make_state()
    for i in range(3):
        mes.create_lot(f"L{i}", "PO", "P1", 10 + i)
    mes.track_in("L0", "LITHO01")
    mes.track_out("L0", "LITHO01")
    snap = mes.wip_snapshot()
    assert snap.lots_seq == 6
    assert {(c.step_id, c.lots, c.wafers) for c in snap.counts} == {("COAT", 2, 23),
                                                                  ("ETCH", 1, 10)}


def test_a_route_cannot_drop_the_step_a_lot_in_rework_returns_to() -> None:
    """The lot failed ETCH (index 1) and is on the rework route; RT must keep ETCH for it."""
    mes = make_state()
    mes.define_route("RT", [
        ev.RouteStep(step_id="COAT", tool_group="LITHO", recipe_id="COAT1", recipe_version=1,
                     process_time_s=60),
        ev.RouteStep(step_id="ETCH", tool_group="ETCH", recipe_id="ETCH1", recipe_version=2,
                     process_time_s=90, rework_route_id="RW-STRIP"),
    ])
    mes.create_lot("L1", "PO", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")
    mes.track_in("L1", "ETCH01")
    mes.track_out("L1", "ETCH01", ok=False)
    mes.track_in("L1", "WET01")
    with pytest.raises(IllegalTransition):
        mes.define_route("RT", [ev.RouteStep(step_id="COAT", tool_group="LITHO",
                                             recipe_id="COAT1", recipe_version=1,
                                             process_time_s=60)])
    mes.track_out("L1", "WET01")  # rework done: back to redo ETCH
    assert (mes.lots["L1"].route_id, mes.lots["L1"].step_id, mes.lots["L1"].state) == (
        "RT", "ETCH", QUEUED)


def lost_at_coat(mes: MesState, lot_id: str) -> None:
    """A lot whose run on LITHO01 ended while the link was down, its completion lost."""
    mes.create_lot(lot_id, "PO-7", "P1", 25)
    mes.track_in(lot_id, "LITHO01")
    mes.completion_lost(lot_id, "LITHO01", "completion not reported by LITHO01")
    assert mes.lots[lot_id].state == HELD and mes.tools["LITHO01"].lot_id == ""


def test_complete_step_moves_a_lot_whose_completion_was_lost_on_without_running_it_again():
    mes = make_state()
    lost_at_coat(mes, "L1")
    mes.hold("L1", "customer", "erp")                      # an ERP hold of its own stays
    events_of(mes)
    mes.apply_command(ev.CompleteStep(command_id="c1", lot_id="L1", reason="tool log: ran",
                                      by="eng-kim"))
    lot = mes.lots["L1"]
    assert (lot.step_id, lot.state, [h.reason for h in lot.holds]) == ("ETCH", HELD, ["customer"])
    got = [(t, d.get("step_id"), d.get("tool_id"), d.get("reason"), d.get("by"))
           for _s, t, _n, d in events_of(mes)]
    assert got == [
        ("lot_tracked_out", "COAT", "LITHO01", None, None),
        ("lot_released", "COAT", None, "tool log: ran", "eng-kim"),
        ("lot_moved", "ETCH", None, None, None)]
    mes.release("L1", "ok", "erp")
    mes.track_in("L1", "ETCH01")
    mes.track_out("L1", "ETCH01")
    assert mes.lots["L1"].state == COMPLETED


def test_complete_step_not_ok_sends_the_lot_to_rework_and_is_refused_without_a_lost_end():
    mes = make_state()
    lost_at_coat(mes, "L1")
    mes.complete_step("L1", "wafers scratched", "eng-kim", ok=False)
    lot = mes.lots["L1"]
    assert (lot.route_id, lot.step_id, lot.holds) == ("RW-STRIP", "STRIP", [])
    # nothing to settle: a queued lot, a lot held for another reason, a lot released and
    # run again (its lost end is no longer the question)
    mes.create_lot("L2", "PO-7", "P1", 25)
    mes.hold("L2", "customer", "erp")
    lost_at_coat(mes, "L3")
    mes.release("L3", "run it again", "eng-kim")
    mes.track_in("L3", "LITHO01")
    events_of(mes)
    for lot_id, why in (("L1", "it is queued"), ("L2", "held: customer"),
                        ("L3", "it is processing")):
        with pytest.raises(IllegalTransition, match=f"no lost completion.*{why}"):
            mes.complete_step(lot_id, "?", "eng-kim")
    assert events_of(mes) == []


def test_a_route_redefined_with_a_step_inserted_keeps_each_lot_at_its_step() -> None:
    """An engineering change inserts CLEAN before ETCH: a lot at ETCH (and one in rework that
    returns to COAT) must stay at those steps, not slide onto the step now at their index."""
    from daemon.fabsync import FabSync
    from dispatch import enforce

    mes = make_state()
    mes.define_tool("WET02", "WET")
    for recipe in ("ETCH1", "CLEAN1"):
        mes.approve_recipe(recipe, 2 if recipe == "ETCH1" else 1, CHECKSUM)
        mes.qualify("ETCH01", recipe, True)
    mes.create_lot("L1", "PO", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")                    # L1 at ETCH (index 1)
    mes.create_lot("L2", "PO", "P1", 25)
    mes.track_in("L2", "LITHO01")
    mes.track_out("L2", "LITHO01", ok=False)          # L2 in rework, returns to COAT (index 0)
    coat, etch = mes.routes["RT"].steps
    clean = ev.RouteStep(step_id="CLEAN", tool_group="ETCH", recipe_id="CLEAN1",
                         recipe_version=1, process_time_s=30)
    mes.define_route("RT", [clean, coat, etch])
    lot = mes.lots["L1"]
    assert (lot.step_id, mes.step_of(lot).step_id) == ("ETCH", "ETCH")
    mes.recipe_report("ETCH01", "ETCH1", CHECKSUM)
    mes.recipe_report("ETCH01", "CLEAN1", CHECKSUM)
    mes.tool_connected("ETCH01", "hsms")
    mes.set_tool_state("ETCH01", "standby")
    sync = FabSync(mes)
    sync.sync()
    now = sync.model.minutes(mes.clock())
    # the dispatch model runs L1 at ETCH, and refuses it CLEAN (out of sequence)
    assert enforce.check_track_in(sync.model, "L1", "ETCH01", "ETCH1", now,
                                  recipe_version=2).ok
    refused = enforce.check_track_in(sync.model, "L1", "ETCH01", "CLEAN1", now, recipe_version=1)
    assert refused.reason == enforce.Refusal.OUT_OF_SEQUENCE
    mes.track_in("L2", "WET01")
    mes.track_out("L2", "WET01")                      # rework done: redo COAT, not CLEAN
    assert (mes.lots["L2"].route_id, mes.lots["L2"].step_id,
            mes.step_of(mes.lots["L2"]).step_id) == ("RT", "COAT", "COAT")
    # a redefinition that drops the step a lot is at is refused, naming the lot
    with pytest.raises(IllegalTransition, match="L1 \\(ETCH\\)"):
        mes.define_route("RT", [clean, coat])


def test_a_lot_held_during_its_last_step_is_not_completed_until_released() -> None:
    """A customer hold placed while the lot runs its last step must stop it shipping."""
    mes = make_state()
    completed: list[str] = []      # what the completion metrics see
    mes.on_lot_completed = lambda lot, _ts: completed.append(lot.lot_id)
    mes.create_lot("L1", "PO", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")
    mes.track_in("L1", "ETCH01")
    mes.hold("L1", "customer", "erp")
    events_of(mes)
    mes.track_out("L1", "ETCH01")
    assert completed == []
    lot = mes.lots["L1"]
    assert (lot.state, lot.step_id, [h.reason for h in lot.holds]) == (HELD, "ETCH", ["customer"])
    assert [t for _s, t, _n, _d in events_of(mes)] == ["lot_tracked_out"]
    assert [(c.step_id, c.lots) for c in mes.wip_counts()] == [("ETCH", 1)]
    assert mes.check_track_in("L1", "ETCH01")[0] == "lot_held"
    mes.release("L1", "customer agreed", "erp")
    assert lot.state == COMPLETED and mes.wip_counts() == [] and completed == ["L1"]
    assert [t for _s, t, _n, _d in events_of(mes)] == ["lot_released", "lot_completed"]


def test_update_lot_changes_only_what_is_given_and_publishes_the_new_values() -> None:
    """An expedite and a new delivery commitment from the ERP; a field left out stays, and
    `due: null` removes the due date."""
    mes = make_state()
    due = dt.datetime(2026, 12, 24, tzinfo=dt.UTC)
    mes.create_lot("L1", "PO-7", "P1", 25, priority=50, due=due)
    mes.take_batch()
    assert mes.update_lot("L1", "customer expedite", "planner", priority=90) == ["priority"]
    lot = mes.lots["L1"]
    assert (lot.priority, lot.due, lot.production_order) == (90, due, "PO-7")
    assert mes.update_lot("L1", "re-pegged", "planner", due=None,
                          production_order="PO-8") == ["due", "production_order"]
    assert (lot.priority, lot.due, lot.production_order) == (90, None, "PO-8")
    (first, second) = events_of(mes)
    assert first[:2] == ("lots", "lot_updated")
    assert first[3]["changed"] == ["priority"] and first[3]["priority"] == 90
    assert first[3]["due"] == "2026-12-24T00:00:00Z" and first[3]["by"] == "planner"
    assert second[3]["changed"] == ["due", "production_order"]
    assert second[3]["due"] is None and second[3]["production_order"] == "PO-8"


def test_update_lot_with_nothing_new_publishes_nothing_and_with_nothing_given_is_refused() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25, priority=50)
    mes.take_batch()
    assert mes.update_lot("L1", "resend", "erp", priority=50) == []
    assert events_of(mes) == []
    with pytest.raises(MesError, match="changes nothing"):
        mes.update_lot("L1", "empty", "erp")


def test_update_lot_of_a_finished_lot_is_refused() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.scrap("L1", "broken", "op")
    with pytest.raises(IllegalTransition, match="L1"):
        mes.update_lot("L1", "late", "erp", priority=99)


def test_scrap_wafers_leaves_the_lot_with_the_rest_and_the_wip_counts_follow() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.take_batch()
    mes.scrap_wafers("L1", 3, "chipped", "op")
    lot = mes.lots["L1"]
    assert (lot.wafers, lot.state) == (22, PROCESSING)   # the run goes on with 22
    ((_s, etype, _n, data),) = events_of(mes)
    assert etype == "wafers_scrapped"
    assert (data["wafers"], data["scrapped"], data["step_id"]) == (22, 3, "COAT")
    assert [(c.step_id, c.lots, c.wafers) for c in mes.wip_counts()] == [("COAT", 1, 22)]
    with pytest.raises(IllegalTransition, match="scrap_lot"):
        mes.scrap_wafers("L1", 22, "all of them", "op")
    assert lot.wafers == 22


def test_a_future_hold_holds_the_lot_when_it_arrives_at_the_step_before_it_runs() -> None:
    """An engineer wants L1 inspected before ETCH: hold_lot with at_step. The lot runs COAT,
    arrives at ETCH held, and enforcement keeps it off the etcher until released."""
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.take_batch()
    mes.future_hold("L1", "inspect before etch", "eng", "ETCH")
    assert mes.lots["L1"].state == QUEUED and mes.lots["L1"].holds == []
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")
    lot = mes.lots["L1"]
    assert (lot.state, lot.step_id) == (HELD, "ETCH")
    assert mes.check_track_in("L1", "ETCH01")[0] == "lot_held"
    types = [(t, d.get("at_step", d["step_id"])) for _s, t, _n, d in events_of(mes)]
    assert types == [("future_hold_set", "ETCH"), ("lot_tracked_in", "COAT"),
                     ("lot_tracked_out", "COAT"), ("lot_moved", "ETCH"), ("lot_held", "ETCH")]
    mes.release("L1", "inspected", "eng")
    assert lot.state == QUEUED and lot.future_holds == []


def test_a_future_hold_at_the_step_the_lot_waits_at_holds_it_now_and_behind_it_is_refused():
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.future_hold("L1", "now", "eng", "COAT")
    assert mes.lots["L1"].state == HELD
    mes.release("L1", "ok", "eng")
    mes.track_in("L1", "LITHO01")
    with pytest.raises(IllegalTransition, match="past step COAT"):
        mes.future_hold("L1", "too late", "eng", "COAT")   # it runs COAT now
    with pytest.raises(MesError, match="not on its route"):
        mes.future_hold("L1", "typo", "eng", "ETCHH")
    mes.track_out("L1", "LITHO01")
    with pytest.raises(IllegalTransition, match="past step COAT"):
        mes.future_hold("L1", "behind", "eng", "COAT")
    assert mes.lots["L1"].future_holds == []


def test_a_future_hold_is_withdrawn_by_releasing_its_reason_and_then_never_holds() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.future_hold("L1", "inspect", "eng", "ETCH")
    mes.take_batch()
    mes.release("L1", "not needed", "eng", hold_reason="inspect")
    ((_s, etype, _n, data),) = events_of(mes)
    assert etype == "future_hold_cancelled"
    assert (data["hold_reason"], data["at_step"], data["reason"]) == ("inspect", "ETCH",
                                                                      "not needed")
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")
    assert (mes.lots["L1"].state, mes.lots["L1"].step_id) == (QUEUED, "ETCH")


def test_a_future_hold_set_in_rework_holds_the_lot_before_it_runs_the_failed_step_again():
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01", ok=False)            # rework route RW-STRIP
    mes.future_hold("L1", "check the strip", "eng", "COAT")
    mes.track_in("L1", "WET01")
    mes.track_out("L1", "WET01")                          # back to COAT
    assert (mes.lots["L1"].state, mes.lots["L1"].step_id) == (HELD, "COAT")


def test_a_future_hold_at_a_step_of_the_rework_route_says_what_to_do() -> None:
    """It was refused as "not on its route RT", though the engineer could see the lot on
    that step's route: the refusal now says a future hold names a step of the main route."""
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01", ok=False)            # rework route RW-STRIP, at STRIP
    with pytest.raises(MesError, match="STRIP is on the rework route RW-STRIP the lot is on "
                                       "now; a future hold names a step of its route RT"):
        mes.future_hold("L1", "look first", "eng", "STRIP")


def test_a_route_that_drops_a_step_a_lot_is_to_be_held_at_is_refused() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.future_hold("L1", "inspect", "eng", "ETCH")
    coat = mes.routes["RT"].steps[0]
    with pytest.raises(IllegalTransition, match="future hold 'inspect' at ETCH"):
        mes.define_route("RT", [coat])
    assert [s.step_id for s in mes.routes["RT"].steps] == ["COAT", "ETCH"]


def test_splitting_off_the_good_wafers_of_a_held_lot_lets_them_go_on() -> None:
    """5 wafers of a held lot are suspect: the other 20 are split off (held like the parent,
    same order, priority, due and step), released and run; the WIP counts stay right."""
    mes = make_state()
    due = dt.datetime(2026, 12, 24, tzinfo=dt.UTC)
    mes.create_lot("L1", "PO-7", "P1", 25, priority=70, due=due)
    mes.track_in("L1", "LITHO01")
    mes.track_out("L1", "LITHO01")                 # now at ETCH
    mes.hold("L1", "defects on 5 wafers", "eng")
    mes.take_batch()
    child = mes.split_lot("L1", "L1.1", 20, "good wafers", "eng")
    assert (child.wafers, child.step_id, child.production_order, child.priority, child.due,
            child.state, [h.reason for h in child.holds]) == (
        20, "ETCH", "PO-7", 70, due, HELD, ["defects on 5 wafers"])
    assert mes.lots["L1"].wafers == 5
    ((_s, etype, _n, data),) = events_of(mes)
    assert etype == "lot_split"
    assert (data["lot_id"], data["parent_lot_id"], data["wafers"], data["parent_wafers"]) == (
        "L1.1", "L1", 20, 5)
    assert [(c.step_id, c.lots, c.wafers) for c in mes.wip_counts()] == [("ETCH", 2, 25)]
    mes.release("L1.1", "good", "eng")
    assert (mes.lots["L1.1"].state, mes.lots["L1"].state) == (QUEUED, HELD)
    mes.track_in("L1.1", "ETCH01")
    mes.track_out("L1.1", "ETCH01")
    assert (mes.lots["L1.1"].state, mes.lots["L1"].state) == (COMPLETED, HELD)


def test_a_split_is_refused_while_the_lot_runs_or_would_be_left_empty() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    with pytest.raises(IllegalTransition, match="leaves none"):
        mes.split_lot("L1", "L1.1", 25, "all", "eng")
    with pytest.raises(IllegalTransition, match="exists already"):
        mes.split_lot("L1", "L1", 5, "same id", "eng")
    mes.track_in("L1", "LITHO01")
    with pytest.raises(IllegalTransition, match="running on LITHO01"):
        mes.split_lot("L1", "L1.1", 5, "now", "eng")
    assert set(mes.lots) == {"L1"} and mes.lots["L1"].wafers == 25


def test_merging_two_lots_at_the_same_step_joins_their_wafers() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.split_lot("L1", "L1.1", 10, "experiment", "eng")
    mes.take_batch()
    mes.merge_lot("L1.1", "L1", "experiment done", "eng")
    assert (mes.lots["L1"].wafers, mes.lots["L1.1"].state) == (25, "merged")
    assert [(c.step_id, c.lots, c.wafers) for c in mes.wip_counts()] == [("COAT", 1, 25)]
    ((_s, etype, _n, data),) = events_of(mes)
    assert etype == "lot_merged"
    assert (data["lot_id"], data["into_lot_id"], data["wafers"], data["into_wafers"]) == (
        "L1.1", "L1", 10, 25)
    with pytest.raises(IllegalTransition, match=r"L1\.1"):
        mes.update_lot("L1.1", "gone", "erp", priority=1)   # it left the WIP


def test_a_merge_of_lots_at_different_steps_or_held_is_refused() -> None:
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 25)
    mes.create_lot("L2", "PO-7", "P1", 25)
    mes.track_in("L2", "LITHO01")
    with pytest.raises(IllegalTransition, match="L2 is processing"):
        mes.merge_lot("L1", "L2", "x", "eng")
    mes.track_out("L2", "LITHO01")
    with pytest.raises(IllegalTransition, match="not at the same step"):
        mes.merge_lot("L1", "L2", "x", "eng")
    mes.create_lot("L3", "PO-7", "P1", 25)
    mes.hold("L3", "spc", "eng")
    with pytest.raises(IllegalTransition, match="L3 is held"):
        mes.merge_lot("L1", "L3", "x", "eng")
    assert [mes.lots[x].wafers for x in ("L1", "L2", "L3")] == [25, 25, 25]


def test_lot_at_names_the_lot_a_tool_ran_at_a_time_for_data_that_arrives_late() -> None:
    """Samples from an MQTT broker's backlog carry their own time: they belong to the lot of
    that time (which may have ended meanwhile), not to the lot processing when they arrive."""
    mes = make_state()
    for lot in ("L1", "L2"):
        mes.create_lot(lot, "PO-7", "P1", 25)
    mes.track_in("L1", "LITHO01", ts=1000.0)
    mes.track_out("L1", "LITHO01", ts=1100.0)
    mes.track_in("L2", "LITHO01", ts=1200.0)
    assert mes.lot_at("LITHO01", 1050.0) == "L1"   # ended since, and moved on to ETCH:
    assert mes.step_at("LITHO01", "L1", 1050.0) == "COAT"   # its data charts at COAT
    assert mes.step_at("LITHO01", "L1", 1150.0) == "ETCH"   # no run then: where it is
    assert mes.lot_at("LITHO01", 1150.0) == ""     # the tool was idle
    assert mes.lot_at("LITHO01", 1250.0) == "L2"   # processing now
    assert mes.lot_at("LITHO01", 900.0) == ""
    assert mes.lot_at("NO-SUCH", 1050.0) == ""
    mes.completion_lost("L2", "LITHO01", "completion not reported")
    assert mes.lot_at("LITHO01", 1250.0) == "L2"   # its run ended when it was taken off


def test_a_merge_that_would_drop_an_expedite_or_re_peg_wafers_to_another_order_is_refused():
    """5 expedited wafers of PO-8, due in December, merged into a PO-7 lot at priority 50 due
    in January, were dispatched as that lot and delivered to PO-7; the ERP must decide first
    (update_lot), then the merge goes through."""
    mes = make_state()
    mes.create_lot("L1", "PO-7", "P1", 20, priority=50,
                   due=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    mes.create_lot("L2", "PO-8", "P1", 5, priority=95,
                   due=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    mes.take_batch()
    with pytest.raises(IllegalTransition, match="production_order, priority, due"):
        mes.merge_lot("L2", "L1", "fill the carrier", "eng")
    assert (mes.lots["L1"].wafers, mes.lots["L2"].state) == (20, QUEUED)
    assert events_of(mes) == []
    mes.update_lot("L1", "carrier joins PO-8's expedite", "planner", priority=95,
                   due=dt.datetime(2026, 12, 1, tzinfo=dt.UTC), production_order="PO-8")
    mes.merge_lot("L2", "L1", "fill the carrier", "eng")
    assert (mes.lots["L1"].wafers, mes.lots["L1"].priority) == (25, 95)


def test_the_lots_of_a_batch_running_now_are_all_named_for_its_data() -> None:
    """An MQTT sample of a batch tool was given the batch's last lot only, so an SPC hold
    on it left the other lots of the batch unheld (GEM traces name them all: "B1,B2")."""
    mes = make_state()
    for lot in ("B1", "B2"):
        mes.create_lot(lot, "PO-7", "P1", 25)
        mes.track_in(lot, "LITHO01", ts=1000.0)
    assert mes.running_lots("LITHO01") == "B1,B2"
    assert mes.lot_at("LITHO01", 1010.0) == "B1,B2"
    mes.track_out("B1", "LITHO01", ts=1100.0)
    mes.track_out("B2", "LITHO01", ts=1100.0)
    assert mes.running_lots("LITHO01") == ""
    assert mes.lot_at("LITHO01", 1010.0) == "B1,B2"   # the run, once it ended
    restarted = MesState(instance_id="test")
    mes.create_lot("L3", "PO-7", "P1", 25)
    mes.track_in("L3", "LITHO01", ts=1200.0)
    restarted.load([(kind, _id, body) for kind, _id, body in mes.take_batch().entities],
                   {}, 0, [])
    assert restarted.running_lots("LITHO01") == "L3"   # rebuilt from the stored lots
