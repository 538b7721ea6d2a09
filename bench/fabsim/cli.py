"""`fabd sim smt2020 ...`: replay an SMT2020 fab with the production dispatcher and report KPIs."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from bench.fabsim import run as fabrun
from dispatch import smt2020
from dispatch.errors import DispatchError
from dispatch.smt2020 import DEFAULT_DATASET

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `fabd sim` options."""
    parser.add_argument("model", choices=["smt2020"], help="fab model format")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                        help="folder with the SMT2020 text files (e.g. .../smt2020/HVLM)")
    parser.add_argument("--days", type=float, default=365.0, help="simulated days (default 365)")
    parser.add_argument("--warmup-days", type=float, default=0.0,
                        help="lots released before this day do not count in cycle time and on-time "
                        "(0: every lot finished counts, initial WIP included)")
    parser.add_argument("--policy", default="fabd",
                        help="dispatch policy: fifo | cr | fabd | deliver (presets) or a policy TOML file")
    parser.add_argument("--compat", choices=["pyscfabsim"], default=None,
                        help="reproduce PySCFabSim's simplifications")
    parser.add_argument("--seeds", type=int, default=1, help="runs with seeds seed..seed+K-1, averaged")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--what-if", action="append", default=[], choices=sorted(fabrun.WHAT_IF),
                        help="remove one kind of capacity loss from the fab (repeatable): "
                        + "; ".join(f"{k}: {v}" for k, v in fabrun.WHAT_IF.items())
                        + ". Bounds what a policy can gain from it")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--plots", type=Path, default=None,
                        help="write PNGs (cycle time per lot type, WIP over time) to this folder")


def run(args: argparse.Namespace) -> int:
    """Run the simulation(s) and print the KPIs."""
    try:
        ds = smt2020.load(args.dataset)
    except smt2020.Smt2020Error as exc:
        print(f"fabd sim: {exc}", file=sys.stderr)
        return 2
    try:
        from bench.fabsim import policy as fabpolicy

        fabpolicy.resolve(args.policy)
    except DispatchError as exc:
        print(f"fabd sim: policy {args.policy!r}: {exc}", file=sys.stderr)
        return 2
    if args.days <= 0 or args.seeds < 1 or args.warmup_days < 0:
        print("fabd sim: --days and --seeds must be positive, --warmup-days >= 0", file=sys.stderr)
        return 2
    cache: dict = {}
    results = []
    t0 = time.perf_counter()
    for k in range(args.seeds):
        seed = args.seed + k
        cfg = fabrun.SimConfig(days=args.days, warmup_days=args.warmup_days, policy=args.policy,
                               compat=args.compat == "pyscfabsim", seed=seed,
                               what_if=tuple(args.what_if))
        bar = _Progress(args.days, f"{ds.name} {args.policy} seed {seed}")
        try:
            results.append(fabrun.run(ds, cfg, model_cache=cache, on_progress=bar.update))
        except (fabrun.SimError, DispatchError) as exc:
            bar.done()
            print(f"fabd sim: {exc}", file=sys.stderr)
            return 1
        bar.done()
    summary = summarise(ds.name, args, results, time.perf_counter() - t0)
    if args.plots is not None:
        from bench.fabsim import plots

        for path in plots.write(args.plots, ds.name, args.policy, results):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_table(summary)
    return 0


def summarise(dataset: str, args: argparse.Namespace, results: list[fabrun.SimResult],
              wall_s: float) -> dict:
    """Return the contract's JSON object, averaged over seeds."""
    types = list(results[0].by_lot_type)
    by_type = {}
    for name in types:
        rows = [r.by_lot_type[name] for r in results]
        by_type[name] = {
            "cycle_time_days": _mean([x.cycle_time_days for x in rows]),
            "lots_finished": _mean([x.lots_finished for x in rows]),
            "on_time_share": _mean([x.on_time_share for x in rows]),
        }
    by_release = {}
    for name in types:
        per_seed = [{c.released_from_day: c for c in r.cycle_time_by_release.get(name, [])}
                    for r in results]
        days = sorted(set.intersection(*(set(d) for d in per_seed)))
        by_release[name] = [{
            "released_from_day": day,
            "cycle_time_days": _mean([d[day].cycle_time_days for d in per_seed]),
            "lots_finished": _mean([d[day].lots_finished for d in per_seed]),
        } for day in days]
    util_names = list(results[0].utilisation_by_family)
    return {
        "dataset": dataset, "policy": str(args.policy), "days": args.days, "seeds": args.seeds,
        "wall_s": round(wall_s, 3), "lots_finished": _mean([r.lots_finished for r in results]),
        "by_lot_type": by_type,
        "compat": args.compat or "none", "warmup_days": args.warmup_days, "first_seed": args.seed,
        "what_if": list(args.what_if),
        "sim_wall_s": [round(r.wall_s, 3) for r in results],
        "cqt_violations": _mean([r.cqt_violations for r in results]),
        "cycle_time_by_release": by_release,
        "utilisation_by_family": {n: _mean([r.utilisation_by_family[n] for r in results])
                                  for n in util_names},
    }


def _mean(xs: list[float]) -> float | None:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return round(sum(xs) / len(xs), 4) if xs else None


def _print_table(s: dict) -> None:
    print(f"{s['dataset']}: policy {s['policy']}, {s['days']:g} days, {s['seeds']} seed(s), "
          f"compat {s['compat']}, warm-up {s['warmup_days']:g} days, wall {s['wall_s']:.1f} s"
          + (f", what-if {', '.join(s['what_if'])}" if s["what_if"] else ""))
    print(f"lots finished: {s['lots_finished']:.0f}")
    print(f"{'lot type':<16} {'CT days':>9} {'finished':>9} {'on time':>8}")
    for name, v in s["by_lot_type"].items():
        ct = v["cycle_time_days"]
        ot = v["on_time_share"]
        print(f"{name:<16} {ct if ct is not None else float('nan'):>9.2f} {v['lots_finished']:>9.0f} "
              f"{(ot if ot is not None else float('nan')) * 100:>7.1f}%")
    print(f"cycle time (days) of the lots released in each {fabrun.COHORT_DAYS:g}-day window "
          f"(from day; windows with {fabrun.COHORT_MIN_FINISHED:.0%} of their lots finished):")
    for name, rows in s["cycle_time_by_release"].items():
        cells = "  ".join(f"{r['released_from_day']:g}: {r['cycle_time_days']:.1f}" for r in rows)
        print(f"  {name:<14} {cells or '(none complete yet)'}")
    for line in unsettled(s):
        print(line)


def unsettled(s: dict, tolerance: float = 0.05, min_lots: int = 200) -> list[str]:
    """Return a warning per lot type whose cycle time moved by more than `tolerance` across
    release windows: the run's mean then depends on its length (start-up, or growing WIP).
    Lot types with fewer than `min_lots` per window are too noisy to tell."""
    out = []
    for name, rows in s["cycle_time_by_release"].items():
        if len(rows) < 3 or min(r["lots_finished"] for r in rows) < min_lots:
            continue
        first, last = rows[0]["cycle_time_days"], rows[-1]["cycle_time_days"]
        if first and abs(last - first) > tolerance * first:
            out.append(f"note: {name} cycle time went from {first:.1f} days (released from day "
                       f"{rows[0]['released_from_day']:g}) to {last:.1f} (from day "
                       f"{rows[-1]['released_from_day']:g}): the fab had not settled; compare "
                       "policies on the later windows or a longer run with --warmup-days")
    return out


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal or every 10%)."""

    def __init__(self, days: float, label: str) -> None:
        self.days = days
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def update(self, day: float) -> None:
        frac = min(1.0, max(0.0, day / self.days))
        step = int(frac * 40) if self.tty else int(frac * 10)
        if step == self.last:
            return
        self.last = step
        if self.tty:
            bar = "#" * step + "." * (40 - step)
            sys.stderr.write(f"\r[{bar}] day {day:7.1f}/{self.days:g} {self.label}")
        else:
            sys.stderr.write(f"[fabd sim] {self.label}: day {day:.0f}/{self.days:g}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
