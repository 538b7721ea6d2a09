"""Plain-Python reference of the SPC tests: each window checked by its definition.

Independent of the kernel's run counters and bit registers, it is the oracle the
tests compare the kernel with, and the baseline the benchmark measures against.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import msgspec

from spc.config import RuleParams
from spc.kernel import KIND_EWMA, KIND_EWMA_EXACT, KIND_INDIVIDUAL


class Zones(msgspec.Struct, frozen=True, kw_only=True):
    """The boundaries the tests compare a plotted statistic with."""

    center: float
    u1: float
    l1: float
    u2: float
    l2: float
    uk: float
    lk: float
    disp_ucl: float = float("inf")
    disp_lcl: float = float("-inf")

    @classmethod
    def from_sigma(cls, center: float, sigma: float, k1_sigma: float = 3.0) -> Zones:
        """Return symmetric zones at 1, 2 and K σ around the centre."""
        return cls(center=center, u1=center + sigma, l1=center - sigma,
                   u2=center + 2.0 * sigma, l2=center - 2.0 * sigma,
                   uk=center + k1_sigma * sigma, lk=center - k1_sigma * sigma)


    def scaled(self, fac: float) -> Zones:
        """Return the zones pulled towards the centre by fac (exact EWMA limits)."""
        c = self.center
        return Zones(center=c, u1=c + (self.u1 - c) * fac, l1=c + (self.l1 - c) * fac,
                     u2=c + (self.u2 - c) * fac, l2=c + (self.l2 - c) * fac,
                     uk=c + (self.uk - c) * fac, lk=c + (self.lk - c) * fac,
                     disp_ucl=self.disp_ucl, disp_lcl=self.disp_lcl)


class Point(NamedTuple):
    """A plotted value and where it fell against the boundaries in force when it arrived."""

    s: float
    above: bool  # strictly above the centre line
    below: bool
    out1_up: bool  # strictly beyond +1σ
    out1_dn: bool
    out2_up: bool  # strictly beyond +2σ
    out2_dn: bool
    outk_up: bool  # strictly beyond +Kσ
    outk_dn: bool


def classify(s: float, z: Zones) -> Point:
    """Return a point's position against the zones."""
    return Point(s, s > z.center, s < z.center, s > z.u1, s < z.l1, s > z.u2, s < z.l2,
                 s > z.uk, s < z.lk)


def tests_at(p: list[Point], i: int, k: RuleParams) -> set[int]:
    """Return the tests that fire at point i (p[0] is the first point since the reset)."""
    x = p[i]
    out: set[int] = set()
    if x.outk_up or x.outk_dn:
        out.add(1)
    k2 = k.k2_points
    if i + 1 >= k2:
        w = p[i - k2 + 1:i + 1]
        if all(v.above for v in w) or all(v.below for v in w):
            out.add(2)
    k3 = k.k3_points
    if i + 1 >= k3:
        d = [p[j].s - p[j - 1].s for j in range(i - k3 + 2, i + 1)]
        if all(v > 0 for v in d) or all(v < 0 for v in d):
            out.add(3)
    k4 = k.k4_points
    if i + 1 >= k4:
        d = [p[j].s - p[j - 1].s for j in range(i - k4 + 2, i + 1)]
        if all(v != 0 for v in d) and all((d[j] > 0) != (d[j - 1] > 0) for j in range(1, len(d))):
            out.add(4)
    k5 = k.k5_of_k_plus_1
    w = p[max(0, i - k5):i + 1]
    if (x.out2_up and sum(v.out2_up for v in w) >= k5) or (
            x.out2_dn and sum(v.out2_dn for v in w) >= k5):
        out.add(5)
    k6 = k.k6_of_k_plus_1
    w = p[max(0, i - k6):i + 1]
    if (x.out1_up and sum(v.out1_up for v in w) >= k6) or (
            x.out1_dn and sum(v.out1_dn for v in w) >= k6):
        out.add(6)
    k7 = k.k7_points
    if i + 1 >= k7 and all(not (v.out1_up or v.out1_dn) for v in p[i - k7 + 1:i + 1]):
        out.add(7)
    k8 = k.k8_points
    if i + 1 >= k8 and all(v.out1_up or v.out1_dn for v in p[i - k8 + 1:i + 1]):
        out.add(8)
    return out


def check_series(values: list[float], z: Zones, k: RuleParams = RuleParams(),
                 tests: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)) -> dict[int, list[int]]:
    """Return, for each test, the 0-based indices where it fires on a whole series."""
    pts = [classify(v, z) for v in values]
    out: dict[int, list[int]] = {t: [] for t in tests}
    for i in range(len(pts)):
        for t in tests_at(pts, i, k) & set(tests):
            out[t].append(i)
    return out


class ReferenceChart:
    """One chart evaluated point by point: the incremental reference (and bench baseline)."""

    def __init__(self, z: Zones, k: RuleParams, tests: tuple[int, ...], *,
                 kind: int = KIND_INDIVIDUAL, ewma_lambda: float = 0.2,
                 dispersion: bool = False) -> None:
        self.z = z
        self.k = k
        self.tests = set(tests)
        self.kind = kind
        self.lam = ewma_lambda
        self.dispersion = dispersion
        self.history: deque[Point] = deque(maxlen=k.longest_window())
        self.ewma = z.center
        self.w = 1.0
        self.prev_raw: float | None = None

    def reset(self) -> None:
        """Forget the history: no window spans a reset."""
        self.history.clear()
        self.ewma = self.z.center
        self.w = 1.0
        self.prev_raw = None

    def push(self, x: float, disp: float = 0.0) -> set[int]:
        """Add one point; return the tests firing on it (9 = the dispersion chart)."""
        fired: set[int] = set()
        z = self.z
        if self.kind in (KIND_EWMA, KIND_EWMA_EXACT):
            self.ewma = self.lam * x + (1.0 - self.lam) * self.ewma
            s = self.ewma
            if self.kind == KIND_EWMA_EXACT:
                self.w = self.w * ((1.0 - self.lam) * (1.0 - self.lam))
                z = z.scaled(math.sqrt(1.0 - self.w))
        else:
            s = x
            if self.kind == KIND_INDIVIDUAL:
                if self.prev_raw is not None:
                    disp = abs(x - self.prev_raw)
                    if disp > z.disp_ucl or disp < z.disp_lcl:
                        fired.add(9)
                self.prev_raw = x
            elif disp > z.disp_ucl or disp < z.disp_lcl:
                fired.add(9)
        if not self.dispersion:
            fired.discard(9)
        self.history.append(classify(s, z))
        h = list(self.history)
        return fired | (tests_at(h, len(h) - 1, self.k) & self.tests)
