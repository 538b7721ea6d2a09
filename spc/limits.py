"""Control limits: from a known centre and σ, or estimated from a phase-I baseline."""

from __future__ import annotations

import itertools
import math

import msgspec

from spc import constants as K
from spc.config import ChartSpec, ChartType
from spc.errors import SpcConfigError
from spc.reference import Zones


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a chart's limits (plotted statistic and dispersion chart)."""

    center: float
    sigma: float  # process σ of individual values
    sigma_stat: float  # σ of the plotted statistic (σ/√n for X-bar, the asymptotic σ for EWMA)
    ucl: float  # centre + K1 σ_stat
    lcl: float  # centre − K1 σ_stat
    # The dispersion chart (MR, R, S); None for an EWMA chart, which has none.
    # A lower limit of 0 never fires: the test is strict.
    disp_center: float | None
    disp_ucl: float | None
    disp_lcl: float | None

    def zones(self) -> Zones:
        """Return the boundaries the rule tests compare with."""
        c, s = self.center, self.sigma_stat
        return Zones(center=c, u1=c + s, l1=c - s, u2=c + 2.0 * s, l2=c - 2.0 * s,
                     uk=self.ucl, lk=self.lcl,
                     disp_ucl=math.inf if self.disp_ucl is None else self.disp_ucl,
                     disp_lcl=-math.inf if self.disp_lcl is None else self.disp_lcl)


def known_limits(spec: ChartSpec, center: float, sigma: float) -> Limits:
    """Return the limits for a known process centre and σ of individual values."""
    if not (math.isfinite(center) and math.isfinite(sigma) and sigma > 0.0):
        raise SpcConfigError(f"limits need a finite centre and σ > 0, got {center}, {sigma}")
    k1 = spec.params().k1_sigma
    t = spec.chart_type
    if t is ChartType.I_MR:
        s_stat = sigma
        dc, du, dl = K.d2(2) * sigma, K.d2_factor(2) * sigma, K.d1_factor(2) * sigma
    elif t is ChartType.EWMA:
        lam = spec.ewma_lambda
        s_stat = sigma * math.sqrt(lam / (2.0 - lam))
        dc, du, dl = None, None, None
    else:
        n = spec.subgroup_size
        s_stat = sigma / math.sqrt(n)
        if t is ChartType.XBAR_R:
            dc, du, dl = K.d2(n) * sigma, K.d2_factor(n) * sigma, K.d1_factor(n) * sigma
        else:
            dc, du, dl = K.c4(n) * sigma, K.b6(n) * sigma, K.b5(n) * sigma
    return Limits(center=center, sigma=sigma, sigma_stat=s_stat, ucl=center + k1 * s_stat,
                  lcl=center - k1 * s_stat, disp_center=dc, disp_ucl=du, disp_lcl=dl)


def estimate_limits(spec: ChartSpec, means: list[float], disps: list[float]) -> Limits | None:
    """Estimate phase-I limits; None when the baseline has no spread (σ would be 0).

    I-MR and EWMA: `means` are the individual values (disps unused), σ = MR-bar/d2(2).
    X-bar/R: subgroup means and ranges, σ = R-bar/d2(n). X-bar/S: means and
    standard deviations, σ = S-bar/c4(n). The dispersion chart gets the phase-I
    centre (MR-bar, R-bar, S-bar) and the D3/D4 or B3/B4 limits.
    """
    center = math.fsum(means) / len(means)
    t = spec.chart_type
    if t in (ChartType.I_MR, ChartType.EWMA):
        mrs = [abs(b - a) for a, b in itertools.pairwise(means)]
        mr_bar = math.fsum(mrs) / len(mrs)
        sigma = mr_bar / K.d2(2)
        if not sigma > 0.0:
            return None
        lim = known_limits(spec, center, sigma)
        if t is ChartType.EWMA:
            return lim
        return msgspec.structs.replace(lim, disp_center=mr_bar, disp_ucl=K.d4_factor(2) * mr_bar,
                                       disp_lcl=K.d3_factor(2) * mr_bar)
    n = spec.subgroup_size
    bar = math.fsum(disps) / len(disps)
    sigma = bar / (K.d2(n) if t is ChartType.XBAR_R else K.c4(n))
    if not sigma > 0.0:
        return None
    lim = known_limits(spec, center, sigma)
    if t is ChartType.XBAR_R:
        return msgspec.structs.replace(lim, disp_center=bar, disp_ucl=K.d4_factor(n) * bar,
                                       disp_lcl=K.d3_factor(n) * bar)
    return msgspec.structs.replace(lim, disp_center=bar, disp_ucl=K.b4(n) * bar,
                                   disp_lcl=K.b3(n) * bar)
