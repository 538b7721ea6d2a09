"""Equipment events keep the fab model in step (state changes the daemon applies each tick)."""

from __future__ import annotations

from dispatch.enforce import track_in
from dispatch.model import LotState
from dispatch.scorer import Dispatcher
from dispatch.sync import apply_event
from equipment.events import (
    AlarmSet,
    E10State,
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
    RecipeReport,
)
from tests.dispatch.fabs import line


def test_a_tool_that_goes_down_gets_no_dispatch_list_until_it_is_back():
    m = line()
    m.add_lot("a", "PA")
    d = Dispatcher(m)
    assert apply_event(m, E10StateChanged(tool_id="G1", ts=0.0, state=E10State.UNSCHEDULED_DOWN), 0.0)
    d.score(0.0)
    assert d.top("G1") is None and d.top("G2") == "a"
    apply_event(m, E10StateChanged(tool_id="G1", ts=0.0, state=E10State.STANDBY), 1.0)
    d.score(1.0)
    assert d.top("G1") == "a"


def test_recipe_report_then_track_in_then_completion_moves_the_lot_on():
    m = line()
    m.approve_recipe("A-1", 1, "c0ffee")
    m.add_lot("a", "PA")
    assert track_in(m, "a", "G1", "A-1", 0.0).reason == "recipe_not_verified"
    assert apply_event(m, RecipeReport(tool_id="G1", ts=0.0, ppid="A-1", checksum="c0ffee",
                                       size_bytes=10), 0.0)
    assert track_in(m, "a", "G1", "A-1", 0.0).ok
    assert apply_event(m, ProcessCompleted(tool_id="G1", ts=0.0, lot_id="a"), 60.0)
    i = m.lot("a")
    assert m.step_name(int(m.lot_step[i])) == "A:2" and m.lot_state[i] == LotState.WAITING
    assert m.tool_busy_until_min[m.tool("G1")] == 60.0 and m.tool_e10[m.tool("G1")] == 1


def test_local_start_is_recorded_and_unknown_ids_are_ignored():
    m = line()
    m.add_lot("a", "PA")
    assert apply_event(m, ProcessStarted(tool_id="G2", ts=0.0, lot_id="a"), 5.0)
    assert m.lot_state[m.lot("a")] == LotState.RUNNING
    assert not apply_event(m, ProcessStarted(tool_id="G2", ts=0.0, lot_id="ghost"), 5.0)
    assert not apply_event(m, E10StateChanged(tool_id="nope", ts=0.0, state=E10State.STANDBY), 5.0)
    assert not apply_event(m, RecipeReport(tool_id="G1", ts=0.0, ppid="?", checksum="", size_bytes=0), 5.0)
    assert not apply_event(m, AlarmSet(tool_id="G1", ts=0.0, alid=1), 5.0)
