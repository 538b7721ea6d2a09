"""Plain-Python reference of the SPC tests: each window checked by its definition.

Independent of the kernel's run counters and bit registers, it is the oracle the
tests compare the kernel with, and the baseline the benchmark measures against.
"""

from __future__ import annotations

from collections import deque

import msgspec

from spc.config import RuleParams
from spc.kernel import KIND_EWMA, KIND_INDIVIDUAL


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


def tests_at(s: list[float], i: int, z: Zones, k: RuleParams) -> set[int]:
    """Return the tests that fire at point i of series s (s[0] is the first point since reset)."""
    x = s[i]
    out: set[int] = set()
    if x > z.uk or x < z.lk:
        out.add(1)
    k2 = k.k2_points
    if i + 1 >= k2:
        w = s[i - k2 + 1:i + 1]
        if all(v > z.center for v in w) or all(v < z.center for v in w):
            out.add(2)
    k3 = k.k3_points
    if i + 1 >= k3:
        d = [s[j] - s[j - 1] for j in range(i - k3 + 2, i + 1)]
        if all(v > 0 for v in d) or all(v < 0 for v in d):
            out.add(3)
    k4 = k.k4_points
    if i + 1 >= k4:
        d = [s[j] - s[j - 1] for j in range(i - k4 + 2, i + 1)]
        if all(v != 0 for v in d) and all((d[j] > 0) != (d[j - 1] > 0) for j in range(1, len(d))):
            out.add(4)
    for test, kk, hi, lo in ((5, k.k5_of_k_plus_1, z.u2, z.l2), (6, k.k6_of_k_plus_1, z.u1, z.l1)):
        w = s[max(0, i - kk):i + 1]
        if (x > hi and sum(v > hi for v in w) >= kk) or (x < lo and sum(v < lo for v in w) >= kk):
            out.add(test)
    k7 = k.k7_points
    if i + 1 >= k7 and all(z.l1 <= v <= z.u1 for v in s[i - k7 + 1:i + 1]):
        out.add(7)
    k8 = k.k8_points
    if i + 1 >= k8 and all(v > z.u1 or v < z.l1 for v in s[i - k8 + 1:i + 1]):
        out.add(8)
    return out


def check_series(values: list[float], z: Zones, k: RuleParams = RuleParams(),
                 tests: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)) -> dict[int, list[int]]:
    """Return, for each test, the 0-based indices where it fires on a whole series."""
    out: dict[int, list[int]] = {t: [] for t in tests}
    for i in range(len(values)):
        for t in tests_at(values, i, z, k) & set(tests):
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
        self.history: deque[float] = deque(maxlen=k.longest_window())
        self.ewma = z.center
        self.prev_raw: float | None = None

    def reset(self) -> None:
        """Forget the history: no window spans a reset."""
        self.history.clear()
        self.ewma = self.z.center
        self.prev_raw = None

    def push(self, x: float, disp: float = 0.0) -> set[int]:
        """Add one point; return the tests firing on it (9 = the dispersion chart)."""
        fired: set[int] = set()
        if self.kind == KIND_EWMA:
            self.ewma = self.lam * x + (1.0 - self.lam) * self.ewma
            s = self.ewma
        else:
            s = x
            if self.kind == KIND_INDIVIDUAL:
                if self.prev_raw is not None:
                    disp = abs(x - self.prev_raw)
                    if disp > self.z.disp_ucl or disp < self.z.disp_lcl:
                        fired.add(9)
                self.prev_raw = x
            elif disp > self.z.disp_ucl or disp < self.z.disp_lcl:
                fired.add(9)
        if not self.dispersion:
            fired.discard(9)
        self.history.append(s)
        h = list(self.history)
        return fired | (tests_at(h, len(h) - 1, self.z, self.k) & self.tests)
