"""Shared helpers for the SPC tests: run a series through the engine and the reference."""

from __future__ import annotations

from spc.cli import check_series
from spc.config import WE_PARAMS, WE_TESTS, RuleParams, RuleSet
from spc.reference import Zones
from spc.reference import check_series as reference_series


def fires(values: list[float], *, rules: RuleSet = RuleSet.NELSON, k: RuleParams | None = None,
          center: float = 0.0, sigma: float = 1.0) -> dict[int, list[int]]:
    """Return where each test fires, by the daemon's engine; assert the reference agrees."""
    if k is None or rules is RuleSet.WESTERN_ELECTRIC:
        got = check_series(values, center, sigma, rules)
    else:
        got = _engine_with_k(values, center, sigma, k)
    params = WE_PARAMS if rules is RuleSet.WESTERN_ELECTRIC else (k or RuleParams())
    tests = WE_TESTS if rules is RuleSet.WESTERN_ELECTRIC else (1, 2, 3, 4, 5, 6, 7, 8)
    zones = Zones.from_sigma(center, sigma, params.k1_sigma)
    assert got == reference_series(values, zones, params, tests)
    return got


def _engine_with_k(values: list[float], center: float, sigma: float, k: RuleParams
                   ) -> dict[int, list[int]]:
    from spc.config import ChartSpec
    from spc.engine import SpcEngine

    eng = SpcEngine()
    cid = eng.register("k", spec=ChartSpec(center=center, sigma=sigma, k=k, dispersion_test=False))
    for i, x in enumerate(values):
        eng.add(cid, x, float(i))
    out: dict[int, list[int]] = {t: [] for t in range(1, 9)}
    for v in eng.evaluate().violations:
        out[v.test].append(v.seq)
    return out
