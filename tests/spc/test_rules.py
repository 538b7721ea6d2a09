"""Each test fires exactly at its boundary and not one point before (conventions of issue 6)."""

from __future__ import annotations

from spc.config import RuleParams, RuleSet
from tests.spc.helpers import fires

IN = 0.5  # inside 1σ, above the centre
LOW = -0.5


def test_1_fires_strictly_beyond_3_sigma_not_on_it():
    got = fires([3.0, -3.0, 3.0000001, -3.0000001, 2.999])
    assert got[1] == [2, 3]


def test_1_point_exactly_on_the_limit_of_a_real_chart_does_not_fire():
    # What an engineer types: centre 10, σ 0.1, a reading of 10.3 sits on the UCL.
    got = fires([10.3, 9.7, 10.31], center=10.0, sigma=0.1)
    assert got[1] == [2]


def test_1_with_k_2_5():
    got = fires([2.5, 2.6, -2.6], k=RuleParams(k1_sigma=2.5))
    assert got[1] == [1, 2]


def test_2_nine_in_a_row_fires_at_the_ninth_not_the_eighth():
    assert fires([IN] * 8)[2] == []
    assert fires([IN] * 9)[2] == [8]
    assert fires([LOW] * 9)[2] == [8]


def test_2_every_qualifying_window_fires_and_nothing_resets():
    assert fires([IN] * 12)[2] == [8, 9, 10, 11]


def test_2_a_point_on_the_centre_line_breaks_the_run():
    assert fires([IN] * 8 + [0.0] + [IN] * 8)[2] == []
    assert fires([IN] * 8 + [0.0] + [IN] * 9)[2] == [17]


def test_2_a_side_change_breaks_the_run():
    assert fires([IN] * 5 + [LOW] * 4 + [IN] * 4)[2] == []


def test_2_with_k_7():
    assert fires([IN] * 7, k=RuleParams(k2_points=7))[2] == [6]
    assert fires([IN] * 6, k=RuleParams(k2_points=7))[2] == []


def test_3_six_points_rising_fires_at_the_sixth():
    up = [-0.5, -0.3, -0.1, 0.1, 0.3, 0.5]
    assert fires(up[:5])[3] == []
    assert fires(up)[3] == [5]
    assert fires(up[::-1])[3] == [5]
    assert fires([*up, 0.7, 0.9])[3] == [5, 6, 7]


def test_3_an_equal_pair_breaks_the_trend():
    assert fires([-0.5, -0.3, -0.1, -0.1, 0.1, 0.3, 0.5])[3] == []
    assert fires([-0.5, -0.3, -0.1, -0.1, 0.1, 0.3, 0.5, 0.7])[3] == []
    assert fires([-0.5, -0.3, -0.1, -0.1, 0.1, 0.3, 0.5, 0.7, 0.9])[3] == [8]


def test_4_fourteen_alternating_fires_at_the_fourteenth():
    alt = [0.2 if i % 2 else -0.2 for i in range(16)]
    assert fires(alt[:13])[4] == []
    assert fires(alt[:14])[4] == [13]
    assert fires(alt)[4] == [13, 14, 15]


def test_4_an_equal_pair_breaks_the_alternation():
    alt = [0.2 if i % 2 else -0.2 for i in range(14)]
    broken = [*alt[:7], alt[6], *alt[7:]]  # a repeated value in the middle
    assert fires(broken)[4] == []


def test_4_alternation_is_about_differences_not_sides():
    # up/down steps all above the centre still alternate
    zig = [0.3 if i % 2 else 0.1 for i in range(14)]
    assert fires(zig)[4] == [13]


def test_5_two_of_three_beyond_2_sigma_same_side():
    assert fires([2.5, 0.0, 2.5])[5] == [2]
    assert fires([2.5, 0.0, 0.0, 2.5])[5] == []  # 2 of 4 is not enough
    assert fires([2.5, -2.5, 0.0])[5] == []  # opposite sides do not add up
    assert fires([2.5, 2.5, 0.0])[5] == [1]  # the point itself must be beyond
    assert fires([-2.5, 0.0, -2.5])[5] == [2]


def test_5_exactly_2_sigma_is_not_beyond_and_3_sigma_counts():
    assert fires([2.0, 2.5])[5] == []
    assert fires([3.5, 2.5])[5] == [1]


def test_5_at_the_start_of_a_series_uses_the_points_that_exist():
    assert fires([2.5])[5] == []
    assert fires([2.5, 2.1])[5] == [1]


def test_6_four_of_five_beyond_1_sigma_same_side():
    assert fires([1.5, 1.5, 0.0, 1.5])[6] == []
    assert fires([1.5, 1.5, 0.0, 1.5, 1.5])[6] == [4]
    assert fires([1.5, 1.5, 0.0, 1.5, 0.5])[6] == []  # the point itself must be beyond
    assert fires([1.5, 1.5, 1.0, 1.5, 1.5])[6] == [4]  # 1.0 is on 1σ, not beyond: 4 of 5 still
    assert fires([1.5, 0.0, 1.5, 0.0, 1.5, 1.5])[6] == []  # 3 of the last 5


def test_7_fifteen_within_1_sigma_fires_at_the_fifteenth():
    hug = [0.1 if i % 3 else -0.2 for i in range(16)]
    assert fires(hug[:14])[7] == []
    assert fires(hug[:15])[7] == [14]
    assert fires(hug)[7] == [14, 15]


def test_7_exactly_1_sigma_counts_as_within():
    assert fires([1.0, -1.0] * 7 + [1.0])[7] == [14]
    assert fires([0.1] * 7 + [1.0000001] + [0.1] * 7)[7] == []


def test_8_eight_beyond_1_sigma_either_side():
    out = [1.5, -1.5, 1.5, -1.5, 1.5, -1.5, 1.5, -1.5]
    assert fires(out[:7])[8] == []
    assert fires(out)[8] == [7]
    assert fires([1.5] * 8)[8] == [7]  # both sides need not appear


def test_8_a_point_exactly_on_1_sigma_breaks_it():
    assert fires([1.5] * 4 + [-1.0] + [1.5] * 4)[8] == []


def test_western_electric_is_tests_1_5_6_and_8_on_one_side():
    got = fires([IN] * 8, rules=RuleSet.WESTERN_ELECTRIC)
    assert set(got) == {1, 2, 5, 6}
    assert got[2] == [7]
    assert fires([IN] * 7, rules=RuleSet.WESTERN_ELECTRIC)[2] == []
    assert fires([2.5, 0.0, 2.5, 3.1], rules=RuleSet.WESTERN_ELECTRIC) == {
        1: [3], 2: [], 5: [2, 3], 6: []}


def test_custom_k_for_tests_3_to_8():
    k = RuleParams(k3_points=4, k4_points=5, k5_of_k_plus_1=3, k6_of_k_plus_1=2, k7_points=5,
                   k8_points=3)
    assert fires([0.1, 0.2, 0.3], k=k)[3] == []
    assert fires([0.1, 0.2, 0.3, 0.4], k=k)[3] == [3]
    assert fires([0.1, -0.1, 0.1, -0.1, 0.1], k=k)[4] == [4]
    assert fires([2.5, 2.5, 0.0, 2.5], k=k)[5] == [3]
    assert fires([1.5, 0.0, 1.5], k=k)[6] == [2]
    assert fires([0.1] * 5, k=k)[7] == [4]
    assert fires([1.5, -1.5, 1.5], k=k)[8] == [2]
