"""Each dispatch rule moves lots in a tool's list the way its definition says."""

from __future__ import annotations

from dispatch.config import Policy, load_policy
from dispatch.model import NO_DUE_MIN
from dispatch.scorer import Dispatcher
from equipment.events import E10State
from tests.dispatch.fabs import batch_line, line, only, rank


def test_fifo_is_the_tie_break_then_due_date_then_lot_order():
    m = line()
    m.add_lot("late", "PA", arrival_min=-10.0, due_min=5000.0)
    m.add_lot("early", "PA", arrival_min=-60.0, due_min=5000.0)
    m.add_lot("same-arrival-due-sooner", "PA", arrival_min=-10.0, due_min=4000.0)
    m.add_lot("same-as-late", "PA", arrival_min=-10.0, due_min=5000.0)
    assert rank(m, only()) == ["early", "same-arrival-due-sooner", "late", "same-as-late"]


def test_hot_lots_first():
    m = line()
    m.add_lot("normal", "PA", arrival_min=-120.0, due_min=9000.0)
    m.add_lot("hot", "PA", hot=1, priority=20, arrival_min=0.0, due_min=9000.0)
    m.add_lot("super", "PA", hot=2, priority=30, arrival_min=0.0, due_min=9000.0)
    assert rank(m, only(hot=0, fifo=1)) == ["super", "hot", "normal"]
    assert rank(m, only(fifo=0)) == ["normal", "hot", "super"]
    assert rank(m, {"preset": "fabd"})[:2] == ["super", "hot"]


def test_priority_level_of_the_fifo_preset():
    m = line()
    m.add_lot("p10", "PA", priority=10, arrival_min=-60.0)
    m.add_lot("p20", "PA", priority=20, arrival_min=0.0)
    assert rank(m, {"preset": "fifo"}) == ["p20", "p10"]


def test_queue_time_urgency_grows_as_the_deadline_nears():
    m = line()
    m.add_lot("free", "PA", step=3, arrival_min=-300.0)
    far = m.add_lot("far", "PA", step=3, arrival_min=0.0)
    near = m.add_lot("near", "PA", step=3, arrival_min=0.0)
    for i, left in ((far, 200.0), (near, 10.0)):
        m._lots["lot_qt_step"][i] = m.lot_step[i]
        m._lots["lot_qt_deadline_min"][i] = left
    # graded urgency (qt_horizon_min > 0): nearer deadline first, then the one further away
    graded = {"preset": "fabd", "qt_horizon_min": 120.0, "rules": {"slack": {"level": -1}}}
    assert rank(m, graded) == ["near", "far", "free"]
    # PySCFabSim (binary): both windowed lots first, among them FIFO (then due, index)
    assert rank(m, {"preset": "fifo"})[2] == "free"
    assert rank(m, only(fifo=0)) == ["free", "far", "near"]


def test_queue_time_gate_holds_back_a_lot_whose_downstream_group_is_saturated():
    gated = {"preset": "fabd", "qt_gate": True}
    m = line(qt_min=60.0)
    m.add_lot("a", "PA")
    # downstream N1 idle: the lot may start
    assert rank(m, gated) == ["a"]
    # N1's only tool down: the 60 min window cannot be met, never start it
    m.set_tool_state("N1a", E10State.UNSCHEDULED_DOWN)
    d = Dispatcher(m, load_policy(gated))
    d.score(0.0)
    assert d.explain("G1") == []
    assert d.blocked() == {"a": "downstream_qt_at_risk"}
    # N1 up with 3 h of ordinary work queued: window lots go first there, so the lot may start
    m.set_tool_state("N1a", E10State.STANDBY)
    for k in range(3):
        m.add_lot(f"q{k}", "PA", step=2)
    assert rank(m, gated) == ["a"]
    # ... but 2 h of other window lots queued ahead of it: the 60 min limit cannot be met
    for k in range(2):
        m.set_queue_time(f"q{k}", 500.0)
    assert rank(m, gated) == []
    # the gate is a policy choice, off in the fabd preset: the lot is offered
    assert rank(m, {"preset": "fabd"}) == ["a"]


def test_critical_ratio_and_slack_prefer_the_lot_closest_to_its_due_date():
    m = line()
    m.add_lot("relaxed", "PA", arrival_min=-60.0, due_min=20000.0)
    m.add_lot("urgent", "PA", arrival_min=0.0, due_min=500.0)
    assert rank(m, {"preset": "cr"}) == ["urgent", "relaxed"]
    assert rank(m, only(slack=0)) == ["urgent", "relaxed"]
    assert rank(m, {"preset": "fifo"}) == ["relaxed", "urgent"]


def test_deliver_serves_lots_that_can_still_make_their_due_date_first():
    m = line()
    rpt = 60.0 + 60.0 + 10.0    # PA's route from its first step
    # time to due as a multiple of the remaining process time (deliver_flow_factor 1.6)
    for name, ratio in (("relaxed", 3.0), ("urgent", 1.7), ("late", 1.2), ("very-late", -2.0)):
        m.add_lot(name, "PA", due_min=ratio * rpt)
    # two classes, each ranked by the next level: slack serves the lot furthest behind first
    by_slack = {**only(deliver=0, slack=1), "deliver_flow_factor": 1.6}
    assert rank(m, by_slack) == ["urgent", "relaxed", "very-late", "late"]
    # slack alone serves the latest lots first, and the critical ratio does the same
    assert rank(m, only(slack=0)) == ["very-late", "late", "urgent", "relaxed"]
    assert rank(m, only(cr=0)) == ["very-late", "late", "urgent", "relaxed"]
    # a lower flow factor counts "late" as still deliverable
    assert rank(m, {**by_slack, "deliver_flow_factor": 1.0}) == [
        "late", "urgent", "relaxed", "very-late"]
    # the deliver preset wants the pace of the due date (2.05): only "relaxed" keeps to it
    assert rank(m, {"preset": "deliver"}) == ["relaxed", "very-late", "late", "urgent"]


def test_slack_serves_the_lot_furthest_behind_its_pace():
    m = line()
    # PA at its first step has 130 min of processing left, at its third step 10 min
    m.add_lot("early-in-route", "PA", step=1, due_min=300.0)
    m.add_lot("nearly-done", "PA", step=3, due_min=100.0)
    # plain slack (flow factor 1): 300 - 130 = 170 min against 100 - 10 = 90: nearly-done first
    assert rank(m, {**only(slack=0), "slack_flow_factor": 1.0}) == ["nearly-done", "early-in-route"]
    # at the pace of a 2.1 X-factor the first lot needs 273 min and has 300: 27 min ahead;
    # the second needs 21 and has 100: 79 ahead, so the first is further behind
    assert rank(m, {**only(slack=0), "slack_flow_factor": 2.1}) == ["early-in-route", "nearly-done"]
    # the fabd preset ranks by it
    assert rank(m, {"preset": "fabd"}) == ["early-in-route", "nearly-done"]


def test_a_lot_without_due_date_counts_as_on_its_pace():
    m = line()
    m.add_lot("ahead", "PA", due_min=100_000.0)
    m.add_lot("no-due-new", "PA", due_min=NO_DUE_MIN, arrival_min=0.0)
    m.add_lot("behind", "PA", due_min=50.0)         # needs 2.1 x 130 min, has 50
    m.add_lot("no-due-old", "PA", due_min=NO_DUE_MIN, arrival_min=-60.0)
    assert rank(m, {"preset": "fabd"}) == ["behind", "no-due-old", "no-due-new", "ahead"]


def test_setup_avoidance_prefers_lots_matching_the_tool_setup():
    m = line(setups=True)
    m.set_tool_setup("G1", "SB")
    m._tools["tool_setup_runs"][m.tool("G1")] = 5
    m.add_lot("needs-A", "PA", arrival_min=-60.0)
    m.add_lot("needs-B", "PB", arrival_min=0.0)
    assert rank(m, {"preset": "fifo"}) == ["needs-B", "needs-A"]
    assert rank(m, only(fifo=0)) == ["needs-A", "needs-B"]
    d = Dispatcher(m, Policy(preset="fifo"))
    d.score(0.0)
    rows = {c.lot_id: c for c in d.explain("G1")}
    assert rows["needs-A"].features["setup"] == -0.5   # 30 min SB -> SA
    assert rows["needs-B"].features["setup"] == 0.0


def test_a_tool_leaves_lots_of_a_setup_another_tool_holds_to_that_tool():
    """G1 (in SA) ran out of SA lots; G2 is in SB. G1 would change to SB for the waiting
    SB lots although G2 runs them without a change; it does only when more than
    setup_switch_lots SB lots per SB tool wait, or for a hot lot."""
    m = line(setups=True)
    m.set_tool_setup("G1", "SA")
    m.set_tool_setup("G2", "SB")
    m._tools["tool_setup_runs"][m.tool("G1")] = 5     # minimum run done
    for k in range(5):
        m.add_lot(f"b{k}", "PB", arrival_min=-60.0 + k)
    fabd = {"preset": "fabd"}
    assert rank(m, fabd, tool="G1") == []
    assert rank(m, fabd, tool="G2") == ["b0", "b1", "b2", "b3", "b4"]
    assert rank(m, {"preset": "fabd", "setup_switch_lots": 0.0}, tool="G1")[:1] == ["b0"]
    assert rank(m, {"preset": "cr"}, tool="G1")[:1] == ["b0"]    # PySCFabSim's rules change
    m.add_lot("b5", "PB", arrival_min=0.0)                       # 6 lots > 5 per SB tool
    assert rank(m, fabd, tool="G1")[:1] == ["b0"]
    m.set_hold("b5", True)
    assert rank(m, fabd, tool="G1") == []                        # held lots do not count
    m.set_hold("b4", True)
    m.add_lot("hot", "PB", hot=1, priority=20, arrival_min=0.0)   # 5 SB lots again, one hot
    assert rank(m, fabd, tool="G1") == ["hot"]
    m.set_hold("hot", True)
    m.set_tool_state("G2", E10State.UNSCHEDULED_DOWN)             # no SB tool up: G1 changes
    assert rank(m, fabd, tool="G1")[:1] == ["b0"]


def test_a_setup_added_with_master_data_after_scoring_is_counted():
    """The per-setup counts are sized by the model's setups: one added later (master data)
    must resize them, not be written past their end by the kernel."""
    m = line(setups=True)
    m.add_lot("a", "PA")
    d = Dispatcher(m, load_policy({"preset": "fabd"}))
    d.score(0.0)
    m.add_setup("SC")          # no new lot, tool or step: only the setups grow
    m.set_tool_setup("G2", "SC")
    d.score(0.0)
    assert d._ws.setup_tools.shape[1] == 3
    assert d._ws.setup_tools[m.group_index["G"], m.setup_index["SC"]] == 1
    assert [c.lot_id for c in d.explain("G2")] == ["a"]


def test_minimum_run_keeps_a_setup_until_its_run_is_done():
    m = line(setups=True)
    m.set_tool_setup("G1", "SA")
    m.add_lot("needs-B", "PB", arrival_min=-60.0)
    m.add_lot("needs-A", "PA", arrival_min=0.0)
    m._tools["tool_setup_runs"][m.tool("G1")] = 1        # 1 of 3 lots run on SA
    assert rank(m, only(minrun=0, fifo=1)) == ["needs-A", "needs-B"]
    m._tools["tool_setup_runs"][m.tool("G1")] = 3        # minimum run done
    assert rank(m, only(minrun=0, fifo=1)) == ["needs-B", "needs-A"]


def test_batch_forming_waits_for_the_minimum_and_for_a_fuller_batch():
    m = batch_line()
    # a policy that fills batches: waits up to an hour for a full one, fuller batches first
    filling = {"preset": "fabd", "batch_fill": 1.0, "batch_max_wait_min": 60.0,
               "rules": {"batch": {"level": 3, "weight": 1.0}}}
    m.add_lot("a1", "PA", step=2, arrival_min=0.0)
    # 25 wafers < batch minimum 50: nobody may start it
    assert rank(m, {"preset": "fifo"}) == []
    m.add_lot("a2", "PA", step=2, arrival_min=0.0)
    # 50 wafers: PySCFabSim-like presets go at the minimum
    assert rank(m, {"preset": "fifo"}) == ["a1", "a2"]
    # nothing more of A-1 upstream: the filling policy goes now rather than wait for nothing
    assert rank(m, filling, now=30.0) == ["a1", "a2"]
    # a lot one step upstream: it waits for a full batch up to batch_max_wait_min (60) ...
    m.add_lot("a3", "PA", step=1, arrival_min=0.0)
    assert rank(m, filling, now=30.0) == []
    d = Dispatcher(m, load_policy(filling))
    d.score(30.0)
    assert d.blocked() == {"a1": "batch_forming", "a2": "batch_forming"}
    # ... then goes with what it has
    assert rank(m, filling, now=61.0) == ["a1", "a2"]
    # a fuller batch of another recipe ranks first
    for k in range(4):
        m.add_lot(f"b{k}", "PB", step=2, arrival_min=10.0)
    assert rank(m, filling, now=61.0)[:4] == ["b0", "b1", "b2", "b3"]
    assert rank(m, only(fifo=0), now=61.0)[:2] == ["a1", "a2"]


def test_line_balance_feeds_the_starving_group_and_holds_back_the_overloaded_one():
    m = line()
    m.add_lot("to-N2", "PB", arrival_min=-60.0)
    m.add_lot("to-N1", "PA", arrival_min=0.0)
    for k in range(6):       # 6 h of work queued at N2
        m.add_lot(f"n2-{k}", "PB", step=2)
    assert rank(m, only(balance=0, fifo=1)) == ["to-N1", "to-N2"]
    assert rank(m, only(fifo=0)) == ["to-N2", "to-N1"]
    d = Dispatcher(m, Policy(preset="fabd"))
    d.score(0.0)
    rows = {c.lot_id: c for c in d.explain("G1")}
    assert rows["to-N1"].features["balance"] == 1.0
    assert rows["to-N2"].features["balance"] == -0.5   # 360 min queued vs 240 target


def test_only_qualified_available_tools_get_lots_not_on_hold():
    m = line()
    m.add_lot("ok", "PA")
    m.add_lot("held", "PA", hold=True)
    m.add_lot("b", "PB")
    m.qualify("G2", ["B-1"], qualified=False)
    assert rank(m, only(), tool="G1") == ["ok", "b"]
    assert rank(m, only(), tool="G2") == ["ok"]
    m.set_inhibit("G1", True)
    assert rank(m, only(), tool="G1") == []
    m.set_inhibit("G1", False)
    m.set_tool_state("G1", E10State.SCHEDULED_DOWN)
    assert rank(m, only(), tool="G1") == []
    m.set_tool_state("G1", E10State.PRODUCTIVE)
    m._tools["tool_busy_until_min"][m.tool("G1")] = 30.0   # busy beyond the lookahead
    assert rank(m, {"preset": "fabd"}, tool="G1") == []
    m._tools["tool_busy_until_min"][m.tool("G1")] = 3.0    # about to be idle (lookahead 5)
    assert rank(m, {"preset": "fabd"}, tool="G1") == ["ok", "b"]


def test_explain_shows_weights_levels_and_contributions():
    m = line()
    m.add_lot("x", "PA", hot=1, priority=20, due_min=600.0, arrival_min=-90.0)
    d = Dispatcher(m, load_policy({"preset": "fabd", "rules": {"fifo": {"level": 3, "weight": 2.0}}}))
    d.score(0.0)
    (row,) = d.explain("G1")
    assert row.rank == 1 and row.step == "A:1" and row.recipe == "A-1"
    assert row.features["fifo"] == 1.5 and row.contributions["fifo"] == 3.0
    assert row.levels["hot"] == 0 and row.keys[0] == 1.0
    assert row.levels["cr"] == -1 and row.contributions["cr"] == 0.0
    assert d.top("G1") == "x"


def test_assign_gives_each_idle_tool_its_own_lot_best_first():
    m = line()
    m.add_lot("first", "PA", arrival_min=-90.0)
    m.add_lot("second", "PA", arrival_min=-60.0)
    m.add_lot("third", "PA", arrival_min=-30.0)
    d = Dispatcher(m, Policy(preset="fifo"))
    assert d.assign(0.0) == {"G1": ["first"], "G2": ["second"]}


def test_assign_forms_a_batch_of_one_recipe_within_min_and_max():
    m = batch_line()
    for k in range(5):
        m.add_lot(f"a{k}", "PA", step=2, arrival_min=-float(k))   # 125 wafers of A-1 waiting
    m.add_lot("b0", "PB", step=2, arrival_min=-100.0)            # 25 wafers of B-1: too few
    got = Dispatcher(m, Policy(preset="fifo")).assign(0.0)
    assert got == {"G1": ["a1", "a2", "a3", "a4"]}        # oldest first, up to 100 wafers


def test_assign_leaves_out_tools_that_cannot_start_now_and_lots_already_on_their_way():
    """The daemon's view: G1 is busy (or starting a4), so its batch goes to G2, without a4."""
    m = batch_line()
    for k in range(5):
        m.add_lot(f"a{k}", "PA", step=2, arrival_min=-float(k))
    d = Dispatcher(m, Policy(preset="fifo"))
    assert d.assign(0.0, unavailable=["G1"], taken=["a4"]) == {"G2": ["a0", "a1", "a2", "a3"]}
    # the model itself is unchanged: the next plain assignment is the usual one
    assert d.assign(0.0) == {"G1": ["a1", "a2", "a3", "a4"]}


def test_assign_gives_a_tool_its_next_lot_when_it_refused_the_recipe_of_the_first():
    m = line()
    m.add_lot("first", "PA", arrival_min=-120.0)     # recipe A-1
    m.add_lot("second", "PB", arrival_min=-60.0)     # recipe B-1
    d = Dispatcher(m, Policy(preset="fifo"))
    assert d.assign(0.0) == {"G1": ["first"], "G2": ["second"]}
    assert d.assign(0.0, blocked=[("G1", "A-1")]) == {"G1": ["second"], "G2": ["first"]}
