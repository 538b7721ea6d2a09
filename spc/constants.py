"""Control-chart constants for subgroup sizes 2..25 (d2, d3, c4 and the factors built on them).

d2 and d3 (mean and standard deviation of the range of n standard normals) were
integrated numerically to five decimals and agree with the ASTM E2587 /
Montgomery tables; c4 is exact. The factors follow their textbook definitions:
A2 = 3/(d2 √n), A3 = 3/(c4 √n), D3/D4 = 1 ∓ 3 d3/d2 (D3 floored at 0),
D1/D2 = d2 ∓ 3 d3, B3/B4 = 1 ∓ 3 √(1−c4²)/c4, B5/B6 = c4 ∓ 3 √(1−c4²).
"""

from __future__ import annotations

import math

from spc.errors import SpcConfigError

MIN_N = 2
MAX_N = 25

_D2 = (1.12838, 1.69257, 2.05875, 2.32593, 2.53441, 2.70436, 2.84720, 2.97003, 3.07751,
       3.17287, 3.25846, 3.33598, 3.40676, 3.47183, 3.53198, 3.58788, 3.64006, 3.68896,
       3.73495, 3.77834, 3.81938, 3.85832, 3.89535, 3.93063)
_D3 = (0.85250, 0.88837, 0.87981, 0.86408, 0.84804, 0.83321, 0.81983, 0.80784, 0.79705,
       0.78732, 0.77848, 0.77042, 0.76303, 0.75621, 0.74991, 0.74405, 0.73859, 0.73348,
       0.72869, 0.72418, 0.71992, 0.71589, 0.71207, 0.70844)


def _check(n: int) -> int:
    if not MIN_N <= n <= MAX_N:
        raise SpcConfigError(f"subgroup size {n} is outside {MIN_N}..{MAX_N}")
    return n - MIN_N


def d2(n: int) -> float:
    """Return E[R]/σ for subgroups of n."""
    return _D2[_check(n)]


def d3(n: int) -> float:
    """Return sd(R)/σ for subgroups of n."""
    return _D3[_check(n)]


def c4(n: int) -> float:
    """Return E[S]/σ for subgroups of n (exact, via the gamma function)."""
    _check(n)
    return math.sqrt(2.0 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def a2(n: int) -> float:
    """Return the X-bar limit factor on R-bar."""
    return 3.0 / (d2(n) * math.sqrt(n))


def a3(n: int) -> float:
    """Return the X-bar limit factor on S-bar."""
    return 3.0 / (c4(n) * math.sqrt(n))


def d3_factor(n: int) -> float:
    """Return D3, the R chart's lower limit factor on R-bar."""
    return max(0.0, 1.0 - 3.0 * d3(n) / d2(n))


def d4_factor(n: int) -> float:
    """Return D4, the R chart's upper limit factor on R-bar."""
    return 1.0 + 3.0 * d3(n) / d2(n)


def d1_factor(n: int) -> float:
    """Return D1, the R chart's lower limit factor on a known σ."""
    return max(0.0, d2(n) - 3.0 * d3(n))


def d2_factor(n: int) -> float:
    """Return D2, the R chart's upper limit factor on a known σ."""
    return d2(n) + 3.0 * d3(n)


def b3(n: int) -> float:
    """Return B3, the S chart's lower limit factor on S-bar."""
    c = c4(n)
    return max(0.0, 1.0 - 3.0 * math.sqrt(1.0 - c * c) / c)


def b4(n: int) -> float:
    """Return B4, the S chart's upper limit factor on S-bar."""
    c = c4(n)
    return 1.0 + 3.0 * math.sqrt(1.0 - c * c) / c


def b5(n: int) -> float:
    """Return B5, the S chart's lower limit factor on a known σ."""
    c = c4(n)
    return max(0.0, c - 3.0 * math.sqrt(1.0 - c * c))


def b6(n: int) -> float:
    """Return B6, the S chart's upper limit factor on a known σ."""
    c = c4(n)
    return c + 3.0 * math.sqrt(1.0 - c * c)
