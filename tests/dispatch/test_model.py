"""The fab model: building, incremental updates, rework loops, queue-time windows, SMT2020."""

from __future__ import annotations

import pytest

from dispatch import smt2020
from dispatch.errors import ModelError, UnknownIdError
from dispatch.model import NO_QT, FabModel, LotState, StepSpec, from_smt2020
from dispatch.scorer import Dispatcher
from dispatch.smt2020 import DEFAULT_DATASET
from tests.dispatch.fabs import line

HVLM = DEFAULT_DATASET


def rework_fab() -> FabModel:
    m = FabModel()
    m.add_route("RW", [StepSpec(group="Strip", recipe="strip"), StepSpec(group="Litho", recipe="recoat")])
    m.add_route("MAIN", [
        StepSpec(group="Litho", recipe="coat"),
        StepSpec(group="Met", recipe="measure", rework_route="RW"),   # back to step 3
        StepSpec(group="Etch", recipe="etch"),
    ])
    m.add_route("MAIN2", [
        StepSpec(group="Litho", recipe="coat2"),
        StepSpec(group="Met", recipe="measure2", rework_route="RW", rework_return_step=2),
    ])
    m.add_product("P", "MAIN")
    m.add_product("P2", "MAIN2")
    return m


def test_non_conforming_lot_takes_the_rework_route_and_returns_to_the_main_route():
    m = rework_fab()
    m.add_lot("L1", "P", step=2)
    assert m.step_name(m.complete_step("L1", 10.0, ok=False)) == "RW:1"
    assert m.step_name(m.complete_step("L1", 20.0)) == "RW:2"
    assert m.step_name(m.complete_step("L1", 30.0)) == "MAIN:3"
    assert m.lot_arrival_min[m.lot("L1")] == 30.0
    assert m.complete_step("L1", 40.0) == -1
    assert m.lot_state[m.lot("L1")] == LotState.DONE


def test_rework_can_return_to_the_measuring_step_itself():
    m = rework_fab()
    m.add_lot("L2", "P2", step=2)
    m.complete_step("L2", 0.0, ok=False)
    m.complete_step("L2", 1.0)
    assert m.step_name(m.complete_step("L2", 2.0)) == "MAIN2:2"   # measured again
    assert m.complete_step("L2", 3.0, ok=True) == -1


def test_a_conforming_lot_or_a_step_without_rework_goes_on():
    m = rework_fab()
    m.add_lot("L3", "P", step=1)
    assert m.step_name(m.complete_step("L3", 0.0, ok=False)) == "MAIN:2"   # no rework route at step 1
    assert m.step_name(m.complete_step("L3", 0.0, ok=True)) == "MAIN:3"


def test_queue_time_window_opens_at_step_end_and_closes_at_track_in():
    m = line(qt_min=60.0)
    m.add_lot("a", "PA")
    i = m.lot("a")
    m.start_lot("a", "G1", 0.0)
    assert m.tool_busy_until_min[m.tool("G1")] == 60.0
    m.release_tool("G1", 60.0)
    m.complete_step("a", 60.0)
    assert m.lot_qt_deadline_min[i] == 120.0 and m.step_name(int(m.lot_qt_step[i])) == "A:2"
    m.start_lot("a", "N1a", 100.0)
    assert m.lot_qt_deadline_min[i] == NO_QT and m.lot_qt_step[i] == -1


def test_track_in_takes_the_setup_and_counts_the_run():
    m = line(setups=True)
    m.add_lot("a", "PA")
    m.add_lot("b", "PA")
    m.start_lot("a", "G1", 0.0)
    m.start_lot("b", "G1", 0.0)
    t = m.tool("G1")
    assert m.setup_ids[int(m.tool_setup[t])] == "SA" and m.tool_setup_runs[t] == 2


def test_lot_slots_are_reused_and_ids_stay_unique():
    m = line()
    for k in range(100):
        m.add_lot(f"L{k}", "PA")
    m.remove_lot("L5")
    assert m.add_lot("new", "PB") == 5
    assert m.n_lots == 100
    with pytest.raises(ModelError):
        m.add_lot("new", "PA")
    with pytest.raises(UnknownIdError):
        m.set_hold("nope", True)
    with pytest.raises(UnknownIdError):
        m.add_lot("x", "no-such-product")


def test_bad_routes_are_refused_with_the_step_named():
    m = FabModel()
    with pytest.raises(ModelError, match="step 1: qt_to_step"):
        m.add_route("R", [StepSpec(group="G", recipe="a", qt_to_step=1, qt_limit_min=5.0)])
    with pytest.raises(ModelError, match="per must be"):
        m.add_route("R2", [StepSpec(group="G", recipe="a", per="hour")])


def test_smt2020_hvlm_builds_the_whole_fab_and_every_tool_group_can_be_scored():
    ds = smt2020.load(HVLM)
    m = from_smt2020(ds)
    assert (m.n_tools, m.n_lots, m.n_groups) == (1443, 2255, 106)
    assert m.route_len[m.route_index["r_3"]] == 583
    # step 30 of r_3 has a 2 h queue-time limit to step 31
    s = m.step_of("r_3", 30)
    assert m.step_qt_limit_min[s] == 120.0 and m.step_name(int(m.step_qt_to[s])) == "r_3:31"
    # step 67 reworks from step 65: the rework route repeats 65..67 and returns to 68
    s67 = m.step_of("r_3", 67)
    rw = m.route_ids[int(m.step_rework_route[s67])]
    assert m.route_len[m.route_index[rw]] == 3
    assert m.step_name(int(m.step_rework_return[s67])) == "r_3:68"
    d = Dispatcher(m)
    out = d.score(0.0)
    assert (out.n > 0).sum() > 500   # most tool groups have work at t=0
    hot = [i for i, name in enumerate(m.lot_ids) if m.lot_hot[i] == 2]
    assert hot, "SMT2020 WIP has super hot lots"


def test_smt2020_scaled_fab_multiplies_tools_and_lots():
    m = from_smt2020(smt2020.load(HVLM), scale=2)
    assert (m.n_tools, m.n_lots) == (2886, 4510)
    assert "Init_Lot_3_2~1" in m.lot_index


def test_queue_time_window_set_from_the_state_of_record():
    m = line()
    m.add_lot("a", "PA", step=2)
    i = m.lot("a")
    m.set_queue_time("a", 45.0)
    assert m.lot_qt_deadline_min[i] == 45.0 and m.step_name(int(m.lot_qt_step[i])) == "A:2"
    m.set_queue_time("a", None)
    assert m.lot_qt_deadline_min[i] == NO_QT and m.lot_qt_step[i] == -1
