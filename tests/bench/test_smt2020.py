"""The SMT2020 parser reads the HVLM reference fab the way the paper describes it."""

from __future__ import annotations

import pytest

from dispatch import smt2020
from dispatch.smt2020 import DEFAULT_DATASET

HVLM = DEFAULT_DATASET

pytestmark = pytest.mark.skipif(not HVLM.is_dir(), reason="SMT2020 HVLM data not installed")


@pytest.fixture(scope="module")
def hvlm() -> smt2020.Dataset:
    return smt2020.load(HVLM)


def test_hvlm_has_the_published_size(hvlm):
    assert len(hvlm.families) == 106
    assert hvlm.tool_count == 1443
    assert len(hvlm.wip) == 2255
    assert {name: len(steps) for name, steps in hvlm.routes.items()} == {"r_3": 583, "r_4": 343}
    assert [s.step for s in hvlm.route_of("part_4")] == list(range(1, 344))


def test_times_are_minutes(hvlm):
    step1 = hvlm.routes["r_3"][0]
    assert (step1.family, step1.per, step1.batch_min, step1.batch_max) == (
        "Diffusion_FE_120", "per_batch", 125, 150)
    assert step1.ptime_min == pytest.approx(501.33)
    cqt = hvlm.routes["r_3"][29]          # step 30: 2 hr to step 31
    assert (cqt.cqt_to_step, cqt.cqt_min) == (31, pytest.approx(120.0))
    pm = hvlm.pm_calendars["DefMet_BE_33_MN"]
    assert pm.mtbpm_min == pytest.approx(30 * 1440) and pm.mttr_min == pytest.approx(13.76 * 60)
    assert hvlm.down_calendars["BREAK_Litho"].mttr_min == pytest.approx(705.59)
    assert hvlm.transport.time_min == pytest.approx(7.5)


def test_setups_min_runs_and_rework(hvlm):
    assert hvlm.setup_times[("DE_BE_13_1", "DE_BE_13_2")] == 7.0
    assert hvlm.setup_times[("", "SU128_1")] == 72.0
    assert hvlm.min_runs["SU91_2"] == 7
    assert len(hvlm.setup_groups["Implant_Gas"]) == 9
    rework = hvlm.routes["r_3"][66]
    assert (rework.step, rework.rework_step, rework.rework_pct) == (67, 65, pytest.approx(1.7))


def test_orders_and_wip(hvlm):
    orders = {o.lot_type: o for o in hvlm.orders}
    assert set(orders) == {"Lot_3", "Lot_4", "HotLot_3", "HotLot_4", "SuperHotLot_3"}
    assert orders["Lot_3"].interval_min == pytest.approx(51.69)
    assert orders["SuperHotLot_3"].priority == 30
    assert orders["Lot_4"].due_offset_min == pytest.approx(30 * 1440 + 7 * 60 + 29 + 20 / 60)
    first = hvlm.wip[0]
    assert (first.lot, first.lot_type, first.current_step, first.pieces) == (
        "Init_Lot_3_2", "Lot_3", 560, 25)


def test_a_broken_file_names_where(tmp_path):
    for f in HVLM.iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    text = (tmp_path / "order.txt").read_text().replace("51.69", "fast", 1)
    (tmp_path / "order.txt").write_text(text)
    with pytest.raises(smt2020.Smt2020Error, match=r"order\.txt:2"):
        smt2020.load(tmp_path)
