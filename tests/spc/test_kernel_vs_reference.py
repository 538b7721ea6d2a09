"""The numba kernel equals the plain-Python reference, series by series and tick by tick."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spc.config import ChartSpec, ChartType, RuleParams, RuleSet
from spc.engine import SpcEngine
from spc.kernel import KIND_EWMA, KIND_EWMA_EXACT, KIND_INDIVIDUAL, KIND_SUBGROUP
from spc.reference import ReferenceChart

CENTER, SIGMA = 10.0, 0.1
# Values on and around every zone boundary, computed as the limits are (c + k σ): ties and
# points exactly on 1σ, 2σ, 3σ and the centre line are frequent.
GRID = [CENTER + k * SIGMA for k in (-3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0,
                                     1.5, 2.0, 2.5, 3.0, 3.5)]

SPECS = [
    ChartSpec(center=CENTER, sigma=SIGMA),
    ChartSpec(center=CENTER, sigma=SIGMA, rules=RuleSet.WESTERN_ELECTRIC),
    ChartSpec(center=CENTER, sigma=SIGMA, k=RuleParams(k1_sigma=2.5, k2_points=5, k3_points=4,
                                                         k4_points=6, k5_of_k_plus_1=3,
                                                         k6_of_k_plus_1=2, k7_points=6,
                                                         k8_points=3)),
    ChartSpec(center=CENTER, sigma=SIGMA, chart_type=ChartType.EWMA, ewma_lambda=0.3,
              tests=(1, 2, 3, 4, 5, 6, 7, 8)),
    ChartSpec(center=CENTER, sigma=SIGMA, chart_type=ChartType.EWMA, ewma_lambda=0.2,
              ewma_exact_limits=False, tests=(1, 2, 5, 6, 7, 8)),
    ChartSpec(center=CENTER, sigma=SIGMA, chart_type=ChartType.XBAR_R, subgroup_size=3),
    ChartSpec(center=CENTER, sigma=SIGMA, chart_type=ChartType.XBAR_S, subgroup_size=4),
]


@st.composite
def series(draw) -> list[float]:
    """Return an adversarial series: shifts, trends, stratification, mixtures, oscillation, ties."""
    n = draw(st.integers(0, 70))
    kind = draw(st.sampled_from(["grid", "shift", "trend", "strat", "mixture", "oscillation"]))
    if kind == "grid":
        return draw(st.lists(st.sampled_from(GRID), min_size=n, max_size=n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    noise = rng.standard_normal(n) * SIGMA
    i = np.arange(n)
    if kind == "shift":
        at = draw(st.integers(0, max(n, 1)))
        x = CENTER + noise + np.where(i >= at, draw(st.sampled_from([-2.0, -1.2, 1.2, 2.0])) * SIGMA, 0)
    elif kind == "trend":
        x = CENTER + noise * 0.2 + draw(st.sampled_from([-0.1, 0.05, 0.1])) * SIGMA * i
    elif kind == "strat":
        x = CENTER + noise * 0.3
    elif kind == "mixture":
        x = CENTER + noise * 0.5 + np.where(rng.random(n) < 0.5, 1.8, -1.8) * SIGMA
    else:
        x = CENTER + np.where(i % 2 == 0, 1.0, -1.0) * draw(st.sampled_from([0.5, 1.0, 2.5])) \
            * SIGMA + noise * 0.1
    return np.round(x, draw(st.sampled_from([2, 3, 6]))).tolist()  # rounding makes ties


def _reference_violations(spec: ChartSpec, values: list[float]) -> set[tuple[int, str, int]]:
    """Return (test, series, seq) for a whole series, pushed point by point to the reference."""
    eng = SpcEngine()
    lim = eng.limits(eng.register("z", spec=spec))
    kind = {ChartType.I_MR: KIND_INDIVIDUAL,
            ChartType.EWMA: KIND_EWMA_EXACT if spec.ewma_exact_limits else KIND_EWMA}.get(
        spec.chart_type, KIND_SUBGROUP)
    ref = ReferenceChart(lim.zones(), spec.params(), spec.enabled_tests(), kind=kind,
                         ewma_lambda=spec.ewma_lambda, dispersion=spec.dispersion_test)
    prim, disp_name = {ChartType.I_MR: ("x", "mr"), ChartType.EWMA: ("ewma", ""),
                       ChartType.XBAR_R: ("xbar", "r"), ChartType.XBAR_S: ("xbar", "s")}[
        spec.chart_type]
    points: list[tuple[float, float]] = []
    if kind == KIND_SUBGROUP:
        n = spec.subgroup_size
        for j in range(0, len(values) - n + 1, n):
            sub = values[j:j + n]
            mean = math.fsum(sub) / n
            if spec.chart_type is ChartType.XBAR_R:
                d = max(sub) - min(sub)
            else:
                d = math.sqrt(math.fsum((v - mean) ** 2 for v in sub) / (n - 1))
            points.append((mean, d))
    else:
        points = [(v, 0.0) for v in values]
    out = set()
    for seq, (x, d) in enumerate(points):
        for t in ref.push(x, d):
            out.add((1, disp_name, seq) if t == 9 else (t, prim, seq))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(series(), min_size=len(SPECS), max_size=len(SPECS)),
       cuts=st.lists(st.floats(0.0, 1.0), max_size=4))
def test_kernel_equals_reference_for_many_charts_across_ticks(data, cuts):
    """All charts share batches; the arrival stream is cut into ticks anywhere."""
    eng = SpcEngine()
    ids = [eng.register(f"T{i}/S/p", spec=spec) for i, spec in enumerate(SPECS)]
    # one arrival stream interleaving every chart's points, in each chart's order
    stream = [(ids[c], x) for j in range(max(map(len, data), default=0))
              for c, vals in enumerate(data) if j < len(vals) for x in [vals[j]]]
    bounds = sorted({0, len(stream), *(int(f * len(stream)) for f in cuts)})
    got: dict[int, set] = {c: set() for c in ids}
    for a, b in itertools.pairwise(bounds):
        for cid, x in stream[a:b]:
            eng.add(cid, x, 0.0)
        for v in eng.evaluate().violations:
            got[v.chart_id].add((v.test, v.series, v.seq))
    for c, spec in enumerate(SPECS):
        assert got[ids[c]] == _reference_violations(spec, data[c]), spec


@settings(max_examples=60, deadline=None)
@given(values=series(), tick=st.integers(1, 20))
def test_points_involved_come_from_this_tick_and_the_history(values, tick):
    """Each violation reports exactly the plotted values of its pattern, even across ticks."""
    eng = SpcEngine()
    cid = eng.register("T/S/p", spec=ChartSpec(center=CENTER, sigma=SIGMA))
    for start in range(0, len(values), tick):
        for j, x in enumerate(values[start:start + tick]):
            eng.add(cid, x, float(start + j), lot_id=f"L{start + j}")
        for v in eng.evaluate().violations:
            assert v.values == tuple(values[v.first_seq:v.seq + 1])
            assert v.ts == tuple(float(q) for q in range(v.first_seq, v.seq + 1))
            assert v.lot_id == f"L{v.seq}"
            span = v.seq - v.first_seq + 1
            if v.test in (2, 3, 4, 7, 8):
                assert span == {2: 9, 3: 6, 4: 14, 7: 15, 8: 8}[v.test]


def test_kernel_equals_reference_on_long_mixed_series_in_uneven_ticks():
    """Long series (runs far beyond K, long alternations) cut into uneven ticks, all specs."""
    rng = np.random.default_rng(2024)
    n = 1500
    i = np.arange(n)
    base = np.concatenate([
        CENTER + rng.standard_normal(n // 3) * SIGMA,  # in control
        CENTER + 0.4 * SIGMA + rng.standard_normal(n // 6) * 0.2 * SIGMA,  # long shift
        CENTER + np.where(i[: n // 6] % 2 == 0, 0.5, -0.5) * SIGMA,  # long oscillation
        CENTER + np.linspace(-3.5, 3.5, n // 6) * SIGMA,  # long trend through every zone
        np.array(GRID)[rng.integers(0, len(GRID), n - 2 * (n // 3) - n // 6)],  # exact limits
    ])
    data = [np.round(np.roll(base, 97 * c), 4).tolist() for c in range(len(SPECS))]
    eng = SpcEngine()
    ids = [eng.register(f"L{c}", spec=spec) for c, spec in enumerate(SPECS)]
    got: dict[int, set] = {c: set() for c in ids}
    pos = 0
    while pos < n:
        step = int(rng.integers(1, 60))
        for c, vals in zip(ids, data, strict=True):
            eng.add_many(np.full(len(vals[pos:pos + step]), c), np.array(vals[pos:pos + step]), 0.0)
        for v in eng.evaluate().violations:
            got[v.chart_id].add((v.test, v.series, v.seq))
        pos += step
    for c, spec in enumerate(SPECS):
        want = _reference_violations(spec, data[c])
        assert want, spec  # the series exercise the chart
        assert got[ids[c]] == want, spec
