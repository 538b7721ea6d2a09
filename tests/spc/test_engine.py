"""The engine the daemon runs: ticks, resets, limit versions, phase I, subgroups, reactions."""

from __future__ import annotations

import logging

import msgspec
import numpy as np
import pytest

import spc
from spc import constants as K
from spc.config import ChartOverride, ChartSpec, ChartType, Reaction, RuleParams, SpcConfig
from spc.engine import SpcEngine
from spc.errors import SpcConfigError, UnknownChartError

KNOWN = ChartSpec(center=0.0, sigma=1.0)


def _tests(result) -> list[tuple[int, int]]:
    return sorted((v.test, v.seq) for v in result.violations)


def test_a_run_spanning_two_ticks_fires_with_points_from_both():
    eng = SpcEngine()
    cid = eng.register("ETCH01/PM1/rf", spec=KNOWN, tool_id="ETCH01", chamber="PM1")
    for i in range(5):
        eng.add(cid, 0.5, float(i), lot_id="LOT1")
    assert eng.evaluate().violations == []
    for i in range(5, 9):
        eng.add(cid, 0.5, float(i), lot_id="LOT2")
    (v,) = eng.evaluate().violations
    assert (v.test, v.seq, v.first_seq) == (2, 8, 0)
    assert v.lot_ids == ("LOT1",) * 5 + ("LOT2",) * 4
    assert v.ts == tuple(float(i) for i in range(9))
    assert v.chart_key == "ETCH01/PM1/rf" and v.tool_id == "ETCH01" and v.chamber == "PM1"
    assert v.description == "9 points in a row on one side of the centre line"


def test_a_run_spanning_many_small_ticks_fires_once_per_window():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    seen = []
    for i in range(12):
        eng.add(cid, -0.5, float(i))
        seen += _tests(eng.evaluate())
    assert seen == [(2, 8), (2, 9), (2, 10), (2, 11)]


def test_explicit_reset_breaks_windows_and_is_a_versioned_event():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    assert [c.version for c in eng.evaluate().limit_changes] == [1]
    for i in range(5):
        eng.add(cid, 0.5, float(i))
    eng.evaluate()
    change = eng.reset("k")
    assert (change.version, change.reason, change.limits) == (2, "reset", eng.limits(cid))
    for i in range(5, 13):
        eng.add(cid, 0.5, float(i))
    assert eng.evaluate().violations == []  # 8 after the reset: the 5 before do not count
    eng.add(cid, 0.5, 13.0)
    (v,) = eng.evaluate().violations
    assert (v.test, v.seq, v.first_seq, v.limits_version) == (2, 13, 5, 2)


def test_set_limits_returns_the_change_and_new_points_use_the_new_limits():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    eng.add(cid, 2.5, 0.0)
    assert eng.evaluate().violations == []
    change = eng.set_limits(cid, center=0.0, sigma=0.5)
    assert change.version == 2 and change.reason == "set"
    assert change.limits.ucl == pytest.approx(1.5)
    eng.add(cid, 2.5, 1.0)
    assert (1, 1) in _tests(eng.evaluate())


def test_tests_5_and_6_restart_with_the_points_after_a_reset():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    eng.add(cid, 2.5, 0.0)
    eng.evaluate()
    eng.reset(cid)
    eng.add(cid, 2.5, 1.0)
    assert _tests(eng.evaluate()) == []  # the 2.5 before the reset is forgotten
    eng.add(cid, 2.5, 2.0)
    (v,) = [v for v in eng.evaluate().violations if v.test == 5]
    assert (v.seq, v.first_seq, v.values) == (2, 1, (2.5, 2.5))


def test_phase_i_estimates_limits_then_watches_the_next_points_in_the_same_tick():
    eng = SpcEngine()
    cid = eng.register("k", spec=ChartSpec(phase_i_points=10))
    base = [10.0, 10.2, 9.9, 10.1, 10.0, 9.8, 10.1, 10.2, 9.9, 10.0]
    for i, x in enumerate([*base, 13.0]):
        eng.add(cid, x, float(i))
    res = eng.evaluate()
    (change,) = res.limit_changes
    mr_bar = np.mean(np.abs(np.diff(base)))
    assert change.reason == "phase_i" and change.version == 1
    assert change.limits.center == pytest.approx(np.mean(base))
    assert change.limits.sigma == pytest.approx(mr_bar / K.d2(2))
    assert change.limits.disp_ucl == pytest.approx(K.d4_factor(2) * mr_bar)
    assert res.points_collected == 10 and res.points_evaluated == 1
    assert _tests(res) == [(1, 10)]  # the phase-I points themselves are not tested
    assert {v.series for v in res.violations} == {"x"}


def test_reset_with_reestimate_goes_back_to_phase_i():
    eng = SpcEngine()
    cid = eng.register("k", spec=ChartSpec(phase_i_points=3, center=0.0, sigma=1.0))
    change = eng.reset(cid, reestimate=True)
    assert change.limits is None and change.version == 2
    for i, x in enumerate([5.0, 5.2, 5.1, 9.0]):
        eng.add(cid, x, float(i))
    res = eng.evaluate()
    assert [c.reason for c in res.limit_changes] == ["config", "phase_i"]
    assert eng.limits(cid).center == pytest.approx(5.1)
    assert (1, 3) in _tests(res)


def test_a_flat_baseline_stays_in_phase_i_and_warns_once(caplog):
    eng = SpcEngine()
    cid = eng.register("FLAT01/setpoint", spec=ChartSpec(phase_i_points=3))
    with caplog.at_level(logging.WARNING, logger="spc.engine"):
        for i in range(9):
            eng.add(cid, 1.0, float(i))
        res = eng.evaluate()
    assert res.limit_changes == [] and eng.limits(cid) is None
    assert sum("FLAT01/setpoint" in r.getMessage() for r in caplog.records) == 1


def test_moving_range_chart_signals_a_jump():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    for i, x in enumerate([0.0, 2.9, -2.9]):
        eng.add(cid, x, float(i))
    (v,) = eng.evaluate().violations
    assert (v.series, v.test, v.seq, v.values) == ("mr", 1, 2, (2.9, -2.9))
    assert v.statistic == pytest.approx(5.8)
    assert v.description == "MR chart beyond its control limits"


def test_xbar_r_chart_from_phase_i_subgroups():
    spec = ChartSpec(chart_type=ChartType.XBAR_R, subgroup_size=5, phase_i_points=4)
    eng = SpcEngine()
    cid = eng.register("CMP01/thk", spec=spec)
    groups = [[10, 11, 9, 10, 10], [10, 10.5, 9.5, 10, 10], [11, 10, 10, 9, 10],
              [10, 10, 10.5, 9.5, 10]]
    for g in groups:
        for x in g:
            eng.add(cid, x, 0.0)
    (change,) = eng.evaluate().limit_changes
    r_bar = np.mean([max(g) - min(g) for g in groups])
    lim = change.limits
    assert lim.ucl == pytest.approx(np.mean(groups) + K.a2(5) * r_bar)
    assert lim.disp_ucl == pytest.approx(K.d4_factor(5) * r_bar)
    for x in (10, 10, 10, 10):  # an incomplete subgroup is not a point yet
        eng.add(cid, x, 1.0)
    assert eng.evaluate().points_evaluated == 0
    eng.add(cid, 20, 2.0, lot_id="LOT7")  # mean 12 beyond the UCL, range 10 beyond D4 R-bar
    res = eng.evaluate()
    assert sorted((v.series, v.test) for v in res.violations) == [("r", 1), ("xbar", 1)]
    r = next(v for v in res.violations if v.series == "r")
    assert r.statistic == pytest.approx(10.0) and r.lot_id == "LOT7"


def test_xbar_s_chart_limits_from_known_sigma():
    eng = SpcEngine()
    cid = eng.register("k", spec=ChartSpec(chart_type=ChartType.XBAR_S, subgroup_size=4,
                                           center=5.0, sigma=2.0))
    lim = eng.limits(cid)
    assert lim.ucl == pytest.approx(5.0 + 3 * 2.0 / 2)
    assert lim.disp_ucl == pytest.approx(K.b6(4) * 2.0)


def test_ewma_chart_signals_a_small_sustained_shift_individuals_miss():
    eng = SpcEngine()
    ew = eng.register("ew", spec=ChartSpec(chart_type=ChartType.EWMA, center=0.0, sigma=1.0,
                                           ewma_lambda=0.2))
    ind = eng.register("i", spec=ChartSpec(center=0.0, sigma=1.0, tests=(1,)))
    for i in range(30):
        eng.add(ew, 1.2, float(i))
        eng.add(ind, 1.2, float(i))
    res = eng.evaluate()
    assert {v.chart_key for v in res.violations} == {"ew"}
    assert {v.test for v in res.violations} == {1}  # EWMA runs test 1 only by default


@pytest.mark.parametrize(("reaction", "tool", "chamber", "lot", "action"), [
    (Reaction.HOLD_LOT, "T1", "PM1", "LOT9", Reaction.HOLD_LOT),
    (Reaction.HOLD_LOT, "T1", "PM1", "", Reaction.NOTIFY),
    (Reaction.INHIBIT_CHAMBER, "T1", "PM1", "", Reaction.INHIBIT_CHAMBER),
    (Reaction.INHIBIT_CHAMBER, "T1", "", "", Reaction.INHIBIT_TOOL),
    (Reaction.INHIBIT_TOOL, "", "", "", Reaction.NOTIFY),
    (Reaction.NOTIFY, "T1", "PM1", "LOT9", Reaction.NOTIFY),
])
def test_each_violation_carries_the_action_of_its_reaction_plan(reaction, tool, chamber, lot,
                                                                 action):
    eng = SpcEngine()
    spec = ChartSpec(center=0.0, sigma=1.0, reaction=reaction)
    cid = eng.register("k", spec=spec, tool_id=tool, chamber=chamber)
    eng.add(cid, 4.0, 0.0, lot_id=lot)
    (v,) = eng.evaluate().violations
    assert v.action is action and v.lot_id == lot


def test_overrides_pick_a_spec_by_key_pattern_first_match_wins():
    cfg = SpcConfig(default=ChartSpec(reaction=Reaction.NOTIFY), overrides=(
        ChartOverride(pattern="ETCH*/*/rf_power", spec=ChartSpec(reaction=Reaction.INHIBIT_CHAMBER)),
        ChartOverride(pattern="ETCH*", spec=ChartSpec(reaction=Reaction.INHIBIT_TOOL)),
    ))
    eng = SpcEngine(cfg)
    assert eng.spec_of(eng.register("ETCH03/PM2/rf_power")).reaction is Reaction.INHIBIT_CHAMBER
    assert eng.spec_of(eng.register("ETCH03/PM2/pressure")).reaction is Reaction.INHIBIT_TOOL
    assert eng.spec_of(eng.register("CVD01/PM1/rf_power")).reaction is Reaction.NOTIFY


def test_add_many_mixes_charts_in_any_order_and_drops_non_finite_points():
    eng = SpcEngine()
    a = eng.register("a", spec=KNOWN)
    b = eng.register("b", spec=KNOWN)
    ids = np.array([b, a] * 9 + [a])
    vals = np.array([-0.5, 0.5] * 9 + [np.nan])
    assert eng.add_many(ids, vals, np.arange(19.0), [f"L{i}" for i in range(19)]) == 19
    res = eng.evaluate()
    assert sorted((eng.key_of(v.chart_id), v.test, v.seq) for v in res.violations) == [
        ("a", 2, 8), ("b", 2, 8)]
    va = next(v for v in res.violations if v.chart_key == "a")
    assert va.lot_id == "L17" and va.ts[-1] == 17.0
    assert eng.points_dropped_total == 1 and res.points_evaluated == 18


def test_a_full_queue_refuses_and_counts():
    eng = SpcEngine(SpcConfig(max_pending_points=3))
    cid = eng.register("k", spec=KNOWN)
    assert [eng.add(cid, 0.0, 0.0) for _ in range(4)] == [True, True, True, False]
    assert eng.add_many(np.array([cid, cid]), np.zeros(2), 0.0) == 0
    assert eng.points_dropped_total == 3
    assert eng.evaluate().points_evaluated == 3


def test_unknown_charts_and_bad_config_fail_with_what_to_fix():
    eng = SpcEngine()
    with pytest.raises(UnknownChartError, match="nope"):
        eng.add("nope", 1.0, 0.0)
    with pytest.raises(SpcConfigError, match="history_points"):
        eng.register("long", spec=ChartSpec(k=RuleParams(k2_points=40)))
    with pytest.raises(msgspec.ValidationError, match=r"k2_points.*\$\.default\.k"):
        msgspec.convert({"default": {"k": {"k2_points": 1}}}, SpcConfig)
    with pytest.raises(msgspec.ValidationError, match="both center and sigma"):
        msgspec.convert({"default": {"center": 1.0}}, SpcConfig)
    assert SpcEngine(SpcConfig(history_points=40)).history_capacity == 64


def test_many_charts_grow_and_keep_their_state():
    eng = SpcEngine(SpcConfig(default=KNOWN))
    ids = np.array([eng.register(f"T{i}") for i in range(300)])
    for _ in range(8):
        eng.add_many(ids, np.full(300, 0.5), 0.0)
        assert eng.evaluate().violations == []
    eng.add_many(ids, np.full(300, 0.5), 0.0)
    assert len(eng.evaluate().violations) == 300
    assert eng.points_evaluated_total == 2700


def test_warm_compiles_the_kernels():
    spc.warm()


def test_process_points_register_their_chart_on_first_sight():
    from equipment.events import ProcessPoint

    eng = SpcEngine(SpcConfig(default=ChartSpec(center=400.0, sigma=2.0,
                                                reaction=Reaction.INHIBIT_CHAMBER)))
    pts = [ProcessPoint(tool_id="ETCH01", parameter="rf_power", value=400.5, ts=float(i),
                        lot_id="LOT3", chamber="PM2") for i in range(9)]
    assert eng.add_points(pts, step_of=lambda p: "STEP12") == 9
    (v,) = eng.evaluate().violations
    assert v.chart_key == spc.chart_key("ETCH01", "rf_power", chamber="PM2", step="STEP12")
    assert v.chart_key == "ETCH01/PM2/STEP12/rf_power"
    assert (v.test, v.action, v.chamber, v.tool_id) == (2, Reaction.INHIBIT_CHAMBER, "PM2",
                                                        "ETCH01")


def test_a_snapshot_carries_windows_limits_and_history_across_a_restart():
    eng = SpcEngine()
    cid = eng.register("T1/-/-/p", spec=ChartSpec(phase_i_points=4), tool_id="T1")
    for i, x in enumerate([1.0, 1.2, 0.9, 1.1] + [1.1] * 5):  # phase I, then 5 above centre
        eng.add(cid, x, float(i), lot_id=f"L{i}")
    eng.evaluate()
    data = eng.snapshot()

    again = SpcEngine()
    again.restore(data)
    assert again.limits("T1/-/-/p") == eng.limits(cid) and again.version(cid) == 1
    for i in range(9, 13):
        again.add("T1/-/-/p", 1.1, float(i), lot_id=f"L{i}")
    res = again.evaluate()
    assert res.limit_changes == []
    (v,) = res.violations
    assert (v.test, v.seq, v.first_seq) == (2, 12, 4)
    assert v.lot_ids == tuple(f"L{i}" for i in range(4, 13))


def test_events_round_trip_through_json_for_the_streams():
    eng = SpcEngine()
    cid = eng.register("ew", spec=ChartSpec(chart_type=ChartType.EWMA, center=0.0, sigma=1.0))
    for i in range(12):
        eng.add(cid, 2.0, float(i), lot_id="LOT1")
    res = eng.evaluate()
    (change,) = res.limit_changes
    assert change.limits.disp_ucl is None  # an EWMA chart has no dispersion chart
    for ev in [change, *res.violations]:
        again = msgspec.json.decode(msgspec.json.encode(ev), type=type(ev))
        assert again == ev
    assert res.violations and res.violations[0].series == "ewma"


def test_per_test_reactions_hold_on_out_of_control_and_notify_on_runs():
    eng = SpcEngine()
    spec = ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.NOTIFY,
                     test_reactions={1: Reaction.HOLD_LOT})
    cid = eng.register("k", spec=spec, tool_id="T1")
    for i, x in enumerate([0.5] * 9 + [3.5]):
        eng.add(cid, x, float(i), lot_id=f"L{i}")
    got = {(v.series, v.test, v.seq): (v.action, v.lot_id) for v in eng.evaluate().violations}
    assert got[("x", 2, 8)] == (Reaction.NOTIFY, "L8")
    assert got[("x", 1, 9)] == (Reaction.HOLD_LOT, "L9")
    assert got[("x", 2, 9)] == (Reaction.NOTIFY, "L9")


def test_a_storm_is_folded_per_chart_test_and_lot_without_losing_a_reaction(caplog):
    eng = SpcEngine(SpcConfig(max_violations_per_tick=5))
    spec = ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT)
    ids = [eng.register(k, spec=spec) for k in ("a", "b")]
    with caplog.at_level(logging.INFO, logger="spc.engine"):
        for cid in ids:
            for i in range(12):
                eng.add(cid, 0.5, float(i), lot_id="LOTA" if i < 10 else "LOTB")
        res = eng.evaluate()  # 8 firings of test 2 > 5
        got = sorted((v.chart_key, v.seq, v.lot_id, v.repeats, v.action) for v in res.violations)
        assert got == [("a", 9, "LOTA", 2, Reaction.HOLD_LOT), ("a", 11, "LOTB", 2, Reaction.HOLD_LOT),
                       ("b", 9, "LOTA", 2, Reaction.HOLD_LOT), ("b", 11, "LOTB", 2, Reaction.HOLD_LOT)]
        assert eng.violations_coalesced_total == 4
        eng.add(ids[0], 0.5, 12.0, lot_id="LOTB")  # one firing: back to normal
        (v,) = eng.evaluate().violations
        assert v.repeats == 1
    assert [r.levelname for r in caplog.records if "firings" in r.getMessage()] == [
        "WARNING", "INFO"]


def test_add_points_refuses_beyond_the_queue_and_counts():
    from equipment.events import ProcessPoint

    eng = SpcEngine(SpcConfig(max_pending_points=2))
    pts = [ProcessPoint(tool_id="T", parameter="p", value=1.0, ts=0.0) for _ in range(5)]
    assert eng.add_points(pts) == 2
    assert eng.points_dropped_total == 3
    assert eng.evaluate().points_collected == 2  # phase I of chart "T/-/-/p"
    assert eng.chart_id("T/-/-/p") == 0


def test_add_many_copies_strided_views_and_caller_buffers():
    eng = SpcEngine()
    cid = eng.register("k", spec=KNOWN)
    buf = np.zeros(20)
    buf[::2] = 0.5
    eng.add_many(np.full(10, cid)[::1], buf[::2], 0.0)
    buf[:] = -9.0  # the caller reuses its buffer before the tick
    res = eng.evaluate()
    assert _tests(res) == [(2, 8), (2, 9)]


def test_exact_ewma_limits_catch_a_start_up_shift_asymptotic_ones_miss():
    eng = SpcEngine()
    exact = eng.register("exact", spec=ChartSpec(chart_type=ChartType.EWMA, center=0.0,
                                                 sigma=1.0, ewma_lambda=0.2))
    asym = eng.register("asym", spec=ChartSpec(chart_type=ChartType.EWMA, center=0.0, sigma=1.0,
                                               ewma_lambda=0.2, ewma_exact_limits=False))
    assert eng.limits(exact).ucl == pytest.approx(1.0)  # 3 σ √(λ/(2−λ)), asymptotic
    eng.add(exact, 3.5, 0.0)  # z₁ = 0.7: beyond the first point's exact limit 3 σ λ = 0.6
    eng.add(asym, 3.5, 0.0)
    (v,) = eng.evaluate().violations
    assert (v.chart_key, v.test, v.statistic) == ("exact", 1, pytest.approx(0.7))
    eng.reset(exact)  # the limits start narrow again after a reset
    eng.add(exact, 3.5, 1.0)
    assert [x.chart_key for x in eng.evaluate().violations] == ["exact"]


def test_an_engine_with_no_charts_yet_snapshots_and_restores():
    # a daemon stopped before any process data came in saves its (empty) SPC state
    data = SpcEngine().snapshot()
    eng = SpcEngine()
    eng.restore(data)
    k = eng.register("k", spec=KNOWN)
    eng.add(k, 9.0, 1.0)   # far outside: the restored engine still evaluates
    assert [v.chart_key for v in eng.evaluate().violations] == ["k"]


def test_an_unusable_snapshot_is_refused_with_the_reason():
    eng = SpcEngine()
    eng.register("k", spec=KNOWN)
    data = eng.snapshot()
    with pytest.raises(SpcConfigError, match="no charts"):
        eng.restore(data)
    with pytest.raises(SpcConfigError, match="unreadable"):
        SpcEngine().restore(b"not a snapshot")
    with pytest.raises(SpcConfigError, match="history capacity"):
        SpcEngine(SpcConfig(history_points=32)).restore(data)


def test_points_given_by_add_and_add_many_in_one_tick_keep_their_arrival_order():
    # 6 readings rising one after the other (test 3), fed partly one by one, partly in arrays
    eng = SpcEngine()
    cid = eng.register("k", spec=ChartSpec(center=0.0, sigma=1.0, dispersion_test=False))
    eng.add(cid, 0.1, 0.0, lot_id="L0")
    eng.add_many(np.array([cid]), np.array([0.2]), 1.0, ["L1"])
    eng.add(cid, 0.3, 2.0, lot_id="L2")
    eng.add_many(np.array([cid] * 3), np.array([0.4, 0.5, 0.6]), np.array([3.0, 4.0, 5.0]),
                 ["L3", "L4", "L5"])
    (v,) = eng.evaluate().violations
    assert (v.test, v.seq, v.first_seq) == (3, 5, 0)
    assert v.values == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert v.ts == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert v.lot_ids == ("L0", "L1", "L2", "L3", "L4", "L5")


def test_points_buffered_when_the_daemon_stops_are_tested_after_the_restart():
    # the daemon saves at stop: points that came in since the last tick are still pending
    eng = SpcEngine()
    cid = eng.register("T1/-/-/p", spec=KNOWN, tool_id="T1")
    for i in range(5):
        eng.add(cid, 0.5, float(i), lot_id=f"L{i}")
    eng.evaluate()
    for i in range(5, 8):
        eng.add(cid, 0.5, float(i), lot_id=f"L{i}")
    eng.add_many(np.array([cid]), np.array([4.0]), 8.0, ["L8"])
    data = eng.snapshot()

    again = SpcEngine()
    again.restore(data)
    res = again.evaluate()
    assert res.points_evaluated == 4
    assert sorted((v.test, v.seq, v.lot_id) for v in res.violations) == [
        (1, 8, "L8"), (2, 8, "L8")]
    v2 = next(v for v in res.violations if v.test == 2)
    assert v2.lot_ids == tuple(f"L{i}" for i in range(9))


XBAR_HOLD = ChartSpec(chart_type=ChartType.XBAR_R, subgroup_size=5, center=0.0, sigma=1.0,
                      reaction=Reaction.HOLD_LOT)


def test_a_subgroup_spanning_two_lots_names_and_holds_both():
    # the next 5 points form the subgroup: 3 of LOTA's wafers, then 2 of LOTB's
    eng = SpcEngine()
    cid = eng.register("CMP01/-/S3/thk", spec=XBAR_HOLD, tool_id="CMP01")
    for i, lot in enumerate(["LOTA"] * 3 + ["LOTB"] * 2):
        eng.add(cid, 3.0, float(i), lot_id=lot)   # mean 3 > 3 σ/√5
    (v,) = eng.evaluate().violations
    assert (v.series, v.test, v.action) == ("xbar", 1, Reaction.HOLD_LOT)
    assert v.lot_id == "LOTA,LOTB" and v.lot_ids == ("LOTA,LOTB",)
    # a subgroup of one lot names that lot alone; a batch's point brings its lots
    for i, lot in enumerate(["LOTC"] * 4 + ["B1,B2"] + ["LOTC"] * 5):
        eng.add(cid, 3.0, float(10 + i), lot_id=lot)
    res = eng.evaluate()
    assert [v.lot_id for v in res.violations if v.test == 1] == ["LOTC,B1,B2", "LOTC"]


def test_a_subgroup_partly_collected_before_a_restart_keeps_its_lots():
    eng = SpcEngine()
    cid = eng.register("CMP01/-/S3/thk", spec=XBAR_HOLD, tool_id="CMP01")
    for i in range(3):
        eng.add(cid, 3.0, float(i), lot_id="LOTA")
    assert eng.evaluate().points_collected == 3
    again = SpcEngine()
    again.restore(eng.snapshot())
    for i in range(3, 5):
        again.add(cid, 3.0, float(i), lot_id="LOTB")
    (v,) = again.evaluate().violations
    assert v.lot_id == "LOTA,LOTB" and v.action is Reaction.HOLD_LOT


def _restarted(data: bytes, spec: ChartSpec) -> SpcEngine:
    eng = SpcEngine(SpcConfig(default=spec))
    eng.restore(data)
    eng.apply_config()
    return eng


def test_a_config_changed_across_a_restart_starts_a_new_phase_or_keeps_the_run():
    eng = SpcEngine(SpcConfig(default=KNOWN))
    cid = eng.register("T1/-/-/p", tool_id="T1")
    for i in range(5):
        eng.add(cid, 0.5, float(i), lot_id=f"L{i}")
    eng.evaluate()
    data = eng.snapshot()
    # limits dropped from the config: phase I again, nothing tested, version 2
    again = _restarted(data, ChartSpec(phase_i_points=4))
    for i in range(5, 9):
        again.add(cid, 0.5, float(i), lot_id=f"L{i}")
    res = again.evaluate()
    assert res.violations == [] and again.version(cid) == 2
    assert [(c.reason, c.version, c.limits) for c in res.limit_changes] == [("config", 2, None)]
    # another K for test 2: the same limits, the run restarts (9 new points needed, not 4)
    again = _restarted(data, msgspec.structs.replace(KNOWN, k=RuleParams(k2_points=7)))
    for i in range(5, 9):
        again.add(cid, 0.5, float(i), lot_id=f"L{i}")
    res = again.evaluate()
    assert res.violations == [] and res.limit_changes == [] and again.version(cid) == 1
    for i in range(9, 12):
        again.add(cid, 0.5, float(i), lot_id=f"L{i}")
    assert [(v.test, v.first_seq, v.seq) for v in again.evaluate().violations] == [(2, 5, 11)]
    # the same config: everything as it was (the ninth point in a row fires)
    again = _restarted(data, KNOWN)
    for i in range(5, 9):
        again.add(cid, 0.5, float(i), lot_id=f"L{i}")
    assert [(v.test, v.first_seq) for v in again.evaluate().violations] == [(2, 0)]


def test_a_damaged_snapshot_is_refused_whole_not_loaded_with_zero_limits():
    eng = SpcEngine()
    eng.register("T1/-/-/p", spec=KNOWN, tool_id="T1")
    snap = msgspec.msgpack.decode(eng.snapshot())
    snap[4]["_fpar"] = snap[4]["_fpar"][:-8]     # the limits' bytes cut short
    again = SpcEngine(SpcConfig(default=KNOWN))
    with pytest.raises(SpcConfigError, match="damaged"):
        again.restore(msgspec.msgpack.encode(snap))
    assert len(again) == 0                       # nothing half-loaded: the charts start over
    cid = again.register("T1/-/-/p")
    again.add(cid, 0.5, 0.0)                     # in control: no alarm from zeroed limits
    assert again.evaluate().violations == []
