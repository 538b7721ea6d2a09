"""Control-chart constants agree with the published tables and with the integral they stand for."""

from __future__ import annotations

import math

import pytest

from spc import constants as K
from spc.errors import SpcConfigError

# (n, factor, table value) from Montgomery, Introduction to SQC, Appendix VI
TABLE = [
    (2, K.d2, 1.128), (5, K.d2, 2.326), (10, K.d2, 3.078), (25, K.d2, 3.931),
    (2, K.d3, 0.853), (5, K.d3, 0.864), (25, K.d3, 0.708),
    (5, K.c4, 0.9400), (10, K.c4, 0.9727), (25, K.c4, 0.9896),
    (2, K.a2, 1.880), (5, K.a2, 0.577), (25, K.a2, 0.153),
    (5, K.a3, 1.427), (25, K.a3, 0.606),
    (2, K.d4_factor, 3.267), (5, K.d4_factor, 2.114), (7, K.d3_factor, 0.076),
    (6, K.d3_factor, 0.0), (25, K.d3_factor, 0.459),
    (6, K.b3, 0.030), (6, K.b4, 1.970), (25, K.b4, 1.435),
    (2, K.d2_factor, 3.686), (5, K.d2_factor, 4.918), (7, K.d1_factor, 0.204),
    (6, K.b5, 0.029), (6, K.b6, 1.874),
]


@pytest.mark.parametrize(("n", "factor", "expected"), TABLE,
                         ids=[f"{f.__name__}({n})" for n, f, _ in TABLE])
def test_factor_matches_the_published_table(n, factor, expected):
    assert factor(n) == pytest.approx(expected, abs=0.0015)


def test_d2_is_the_expected_range_of_n_standard_normals():
    xs = [i / 200.0 for i in range(-1800, 1801)]
    phi = [0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs]
    for n in (2, 3, 7, 13, 25):
        integral = sum(1.0 - (1.0 - p) ** n - p**n for p in phi) / 200.0
        assert K.d2(n) == pytest.approx(integral, abs=2e-5)


def test_subgroup_size_outside_the_tables_is_a_config_error():
    with pytest.raises(SpcConfigError, match="26"):
        K.d2(26)
