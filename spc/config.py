"""SPC configuration: rule sets and their K, chart specs, per-key overrides, reaction plans.

Every default below is what a chart gets when the config says nothing about it.
Decoding a TOML/JSON config with `msgspec.convert(data, SpcConfig)` reports a
bad value with its key path (the checks live in `__post_init__`).
"""

from __future__ import annotations

import enum
import fnmatch

import msgspec

# A run-length K must fit the kernel's 63-bit history registers and the ring buffer.
MAX_K = 62


class RuleSet(enum.StrEnum):
    """Which tests a chart runs."""

    NELSON = "nelson"  # the eight tests, with the chart's K
    WESTERN_ELECTRIC = "we"  # tests 1, 5, 6 and 8 in a row on one side (test 2 with K=8)


class ChartType(enum.StrEnum):
    """The statistic a chart plots."""

    I_MR = "i_mr"  # individuals, with a moving-range chart (span 2)
    XBAR_R = "xbar_r"  # subgroup means, with a range chart
    XBAR_S = "xbar_s"  # subgroup means, with a standard-deviation chart
    EWMA = "ewma"  # exponentially weighted moving average of individuals


class Reaction(enum.StrEnum):
    """What the daemon core does when a chart signals."""

    HOLD_LOT = "hold_lot"  # hold the lot of the flagged point (every lot of its subgroup)
    INHIBIT_TOOL = "inhibit_tool"  # inhibit the chart's tool
    INHIBIT_CHAMBER = "inhibit_chamber"  # inhibit the chart's chamber
    NOTIFY = "notify"  # publish the violation only


class RuleParams(msgspec.Struct, frozen=True, kw_only=True):
    """Minitab's K for each of the eight tests (defaults: Nelson 1984)."""

    k1_sigma: float = 3.0  # test 1: one point beyond K σ (strictly)
    k2_points: int = 9  # test 2: K in a row strictly on one side of the centre
    k3_points: int = 6  # test 3: K points steadily rising or falling (K-1 differences)
    k4_points: int = 14  # test 4: K points alternating up and down (K-1 differences)
    k5_of_k_plus_1: int = 2  # test 5: K of the last K+1 beyond 2σ on the point's side
    k6_of_k_plus_1: int = 4  # test 6: K of the last K+1 beyond 1σ on the point's side
    k7_points: int = 15  # test 7: K in a row within 1σ (|d| ≤ σ)
    k8_points: int = 8  # test 8: K in a row beyond 1σ, either side

    def __post_init__(self) -> None:
        if not 0.0 < self.k1_sigma <= 10.0:
            raise ValueError(f"k1_sigma must be in (0, 10], got {self.k1_sigma}")
        for name in ("k2_points", "k3_points", "k4_points", "k7_points", "k8_points"):
            k = getattr(self, name)
            if not 2 <= k <= MAX_K:
                raise ValueError(f"{name} must be in 2..{MAX_K}, got {k}")
        for name in ("k5_of_k_plus_1", "k6_of_k_plus_1"):
            k = getattr(self, name)
            if not 1 <= k <= MAX_K - 1:
                raise ValueError(f"{name} must be in 1..{MAX_K - 1}, got {k}")

    def longest_window(self) -> int:
        """Return the most points any test looks at."""
        return max(self.k2_points, self.k3_points, self.k4_points, self.k5_of_k_plus_1 + 1,
                   self.k6_of_k_plus_1 + 1, self.k7_points, self.k8_points)


WE_PARAMS = RuleParams(k1_sigma=3.0, k2_points=8, k5_of_k_plus_1=2, k6_of_k_plus_1=4)
WE_TESTS = (1, 2, 5, 6)
ALL_TESTS = (1, 2, 3, 4, 5, 6, 7, 8)


class ChartSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How one chart is built, tested and reacted to."""

    chart_type: ChartType = ChartType.I_MR
    rules: RuleSet = RuleSet.NELSON
    # None = every test of the rule set; otherwise a subset of 1..8 (Nelson numbering).
    tests: tuple[int, ...] | None = None
    # Nelson K's; ignored for the Western Electric set, whose K's are fixed.
    k: RuleParams = RuleParams()
    # Known limits: centre and process σ (of individual values). Both None = phase I.
    center: float | None = None
    sigma: float | None = None
    # Phase I: points (I-MR, EWMA) or subgroups (X-bar) collected to estimate limits.
    phase_i_points: int = 25
    subgroup_size: int = 5  # X-bar charts only; 2..25
    ewma_lambda: float = 0.2  # EWMA weight on the newest point
    # EWMA limits that start narrow and widen to the asymptotic ones (σ_z √(1 − (1 − λ)^(2t))
    # at the t-th point after a reset), as Minitab does; False: asymptotic limits throughout.
    ewma_exact_limits: bool = True
    # Also signal when the dispersion chart (MR, R, S) is beyond its limits (test 1 there).
    dispersion_test: bool = True
    reaction: Reaction = Reaction.NOTIFY
    # Per-test exceptions to `reaction`, e.g. {1 = "hold_lot"} to hold on a point beyond
    # the limits but only notify on run patterns. The dispersion chart counts as test 1.
    test_reactions: dict[int, Reaction] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.center is None) != (self.sigma is None):
            raise ValueError("give both center and sigma, or neither (phase I)")
        if self.sigma is not None and not self.sigma > 0.0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.tests is not None and not set(self.tests) <= set(ALL_TESTS):
            raise ValueError(f"tests must be a subset of 1..8, got {list(self.tests)}")
        if not set(self.test_reactions) <= set(ALL_TESTS):
            raise ValueError(f"test_reactions keys must be tests 1..8, got {sorted(self.test_reactions)}")
        if not 2 <= self.subgroup_size <= 25:
            raise ValueError(f"subgroup_size must be in 2..25, got {self.subgroup_size}")
        if self.phase_i_points < 2:
            raise ValueError(f"phase_i_points must be >= 2, got {self.phase_i_points}")
        if not 0.0 < self.ewma_lambda <= 1.0:
            raise ValueError(f"ewma_lambda must be in (0, 1], got {self.ewma_lambda}")

    def params(self) -> RuleParams:
        """Return the K's in force (the fixed Western Electric ones for that set)."""
        return WE_PARAMS if self.rules is RuleSet.WESTERN_ELECTRIC else self.k

    def enabled_tests(self) -> tuple[int, ...]:
        """Return the test numbers this chart runs."""
        base = WE_TESTS if self.rules is RuleSet.WESTERN_ELECTRIC else ALL_TESTS
        if self.tests is None:
            # Runs rules on an EWMA's autocorrelated statistic mean little: test 1 only.
            return (1,) if self.chart_type is ChartType.EWMA else base
        return tuple(t for t in base if t in self.tests)


class ChartOverride(msgspec.Struct, frozen=True, kw_only=True):
    """A spec for every chart whose key matches a glob pattern (first match wins)."""

    pattern: str  # fnmatch glob on the chart key, e.g. "ETCH*/*/rf_power"
    spec: ChartSpec


class SpcConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The SPC engine's configuration."""

    default: ChartSpec = ChartSpec()
    overrides: tuple[ChartOverride, ...] = ()
    # Points of history kept per chart (for the points a violation reports); rounded
    # up to a power of two and at least the longest window of any configured test.
    history_points: int = 16
    # Points buffered between ticks; beyond this, add() refuses and counts the drop.
    max_pending_points: int = 5_000_000
    # A storm guard: when one tick flags more than this, the firings of one test on one
    # chart for one lot are folded into one Violation (the latest, with `repeats` set).
    # Every chart, test and lot still gets its Violation, so no reaction is lost.
    max_violations_per_tick: int = 20_000

    def __post_init__(self) -> None:
        if self.history_points < 2:
            raise ValueError(f"history_points must be >= 2, got {self.history_points}")
        if self.max_violations_per_tick < 1:
            raise ValueError("max_violations_per_tick must be >= 1, "
                             f"got {self.max_violations_per_tick}")
        if self.max_pending_points < 1:
            raise ValueError(f"max_pending_points must be >= 1, got {self.max_pending_points}")

    def spec_for(self, key: str) -> ChartSpec:
        """Return the spec of the first override matching the key, else the default."""
        for ov in self.overrides:
            if fnmatch.fnmatchcase(key, ov.pattern):
                return ov.spec
        return self.default
