"""`fabd spc`: check a series against the SPC tests, or plot it as a control chart.

    fabd spc check --center 10 --sigma 0.2 [--rules nelson|we] [FILE]
    fabd spc plot  --center 10 --sigma 0.2 [--rules nelson|we] [FILE] --out chart.png

FILE (stdin when absent) holds one value per line; blank lines are skipped.
Without --center/--sigma the limits are estimated from the series itself
(mean, and σ = MR-bar/d2), as a phase-I study would. `check` prints JSON:
for each test number, the 0-based indices where it fires, computed by the
same engine the daemon runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable

import msgspec
import numpy as np

from spc.config import ChartSpec, ChartType, RuleParams, RuleSet, SpcConfig
from spc.engine import SpcEngine
from spc.errors import SpcConfigError, SpcInputError
from spc.limits import estimate_limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the check and plot subcommands."""
    sub = parser.add_subparsers(dest="spc_command", metavar="ACTION", required=True)
    for name, help_text in (("check", "print where each test fires, as JSON"),
                            ("plot", "write a PNG control chart with the violations marked")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", nargs="?", help="one value per line (default: stdin)")
        p.add_argument("--center", type=float, help="centre line (default: the series mean)")
        p.add_argument("--sigma", type=float, help="process sigma (default: MR-bar/d2 of the series)")
        p.add_argument("--rules", choices=[r.value for r in RuleSet], default="nelson",
                       help="nelson: the eight tests; we: Western Electric (tests 1, 2 with K=8, 5, 6)")
        k = p.add_argument_group("Nelson K parameters (Minitab's; defaults 3, 9, 6, 14, 2, 4, 15, 8)")
        k.add_argument("--k1", type=float, metavar="SIGMA", help="test 1: beyond K sigma")
        for t, what in ((2, "in a row on one side"), (3, "points rising or falling"),
                        (4, "points alternating"), (5, "of K+1 beyond 2 sigma"),
                        (6, "of K+1 beyond 1 sigma"), (7, "in a row within 1 sigma"),
                        (8, "in a row beyond 1 sigma")):
            k.add_argument(f"--k{t}", type=int, metavar="K", help=f"test {t}: K {what}")
        if name == "plot":
            p.add_argument("--out", required=True, help="PNG file to write")
            p.add_argument("--title", default="", help="chart title (default: the file name)")


def parse_values(lines: Iterable[str]) -> list[float]:
    """Return the numbers of a one-value-per-line text; SpcInputError names a bad line."""
    out: list[float] = []
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            x = float(text)
        except ValueError:
            raise SpcInputError(f"line {no}: {text[:40]!r} is not a number") from None
        if not math.isfinite(x):
            raise SpcInputError(f"line {no}: {text[:40]!r} is not a finite number")
        out.append(x)
    return out


def check_series(values: list[float], center: float, sigma: float,
                 rules: RuleSet = RuleSet.NELSON, k: RuleParams | None = None
                 ) -> dict[int, list[int]]:
    """Return, for each test of the rule set, the 0-based indices where it fires."""
    spec = ChartSpec(chart_type=ChartType.I_MR, rules=rules, center=center, sigma=sigma,
                     k=k or RuleParams(), dispersion_test=False)
    # every firing is reported (no storm folding) and every value is taken, however many;
    # the history holds the longest window of the K's given (any K of 2..62)
    engine = SpcEngine(SpcConfig(max_violations_per_tick=2**62,
                                 max_pending_points=max(1, len(values)),
                                 history_points=spec.params().longest_window()))
    cid = engine.register("cli", spec=spec)
    engine.add_many(np.zeros(len(values), np.int64) + cid, np.asarray(values, float),
                    np.arange(len(values), dtype=float))
    fired: dict[int, list[int]] = {t: [] for t in spec.enabled_tests()}
    for v in engine.evaluate().violations:
        fired[v.test].append(v.seq)
    return fired


def _limits_for(values: list[float], center: float | None, sigma: float | None
                ) -> tuple[float, float]:
    if center is not None and sigma is not None:
        return center, sigma
    if len(values) < 2:
        raise SpcInputError("need at least 2 values to estimate limits; give --center and --sigma")
    lim = estimate_limits(ChartSpec(), values, [])
    if lim is None:
        raise SpcInputError("the series has no spread (σ estimate is 0); give --sigma")
    c = center if center is not None else lim.center
    s = sigma if sigma is not None else lim.sigma
    print(f"fabd spc: limits estimated from the series: center={c:.6g} sigma={s:.6g}",
          file=sys.stderr)
    return c, s


_K_FIELDS = {"k1": "k1_sigma", "k2": "k2_points", "k3": "k3_points", "k4": "k4_points",
             "k5": "k5_of_k_plus_1", "k6": "k6_of_k_plus_1", "k7": "k7_points", "k8": "k8_points"}


def _rule_params(args: argparse.Namespace) -> RuleParams:
    given = {field: getattr(args, opt) for opt, field in _K_FIELDS.items()
             if getattr(args, opt) is not None}
    if given and args.rules == RuleSet.WESTERN_ELECTRIC:
        raise SpcInputError("--k1..--k8 apply to --rules nelson; the Western Electric K's are fixed")
    try:
        return msgspec.convert(given, RuleParams)
    except msgspec.ValidationError as exc:
        raise SpcInputError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run `fabd spc check|plot`."""
    try:
        if args.file:
            with open(args.file, encoding="utf-8") as fh:
                values = parse_values(fh)
        else:
            values = parse_values(sys.stdin)
        k = _rule_params(args)
        center, sigma = _limits_for(values, args.center, args.sigma)
        fired = check_series(values, center, sigma, RuleSet(args.rules), k)
    except (OSError, SpcInputError, SpcConfigError) as exc:
        print(f"fabd spc {args.spc_command}: {exc}", file=sys.stderr)
        return 2
    if args.spc_command == "check":
        print(json.dumps({str(t): ix for t, ix in fired.items()}))
        return 0
    from spc.plot import plot_chart  # matplotlib only when a picture is asked for

    title = args.title or (args.file or "stdin")
    try:
        plot_chart(values, center, sigma, fired, args.out, title=title, k1_sigma=k.k1_sigma)
    except OSError as exc:
        print(f"fabd spc plot: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    n = sum(len(v) for v in fired.values())
    print(f"wrote {args.out}: {len(values)} points, {n} signals")
    return 0
