"""What every benchmark shares: the contract's JSON line, timing, progress on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable


def emit(bench: str, metric: str, value: float, unit: str, baseline: str,
         baseline_value: float, *, lower_is_better: bool = False, as_json: bool = True) -> dict:
    """Print one result line as the architecture contract defines it and return it.

    `ratio` > 1 always means fabd did better than the baseline: value / baseline_value
    for rates (higher is better), baseline_value / value for durations, latencies and
    other costs (`lower_is_better=True`). It is None when it cannot be formed (a zero).
    """
    if lower_is_better:
        ratio = (baseline_value / value) if value > 0 else None
    else:
        ratio = (value / baseline_value) if baseline_value else None
    row = {"bench": bench, "metric": metric, "value": round(value, 6), "unit": unit,
           "baseline": baseline, "baseline_value": round(baseline_value, 6),
           "ratio": round(ratio, 3) if ratio is not None else None}
    if as_json:
        print(json.dumps(row), flush=True)
    else:
        r = f"{ratio:.2f}x" if ratio is not None else "n/a"
        print(f"{bench:>12} {metric:<36} {value:>14.4g} {unit:<10} vs {baseline} "
              f"{baseline_value:.4g} ({r})", flush=True)
    return row


def progress(msg: str) -> None:
    """Tell the person at the terminal what is happening (stderr, so --json stays clean)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def standard_args(name: str, argv: list[str] | None, extra: Callable | None = None
                  ) -> argparse.Namespace:
    """Parse `--quick` and `--json` (plus a benchmark's own options)."""
    p = argparse.ArgumentParser(prog=f"python -m bench {name}")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds, for tests)")
    p.add_argument("--json", action="store_true", help="print the contract's JSON lines")
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def best_of(fn: Callable[[], object], repeat: int = 5, number: int = 1) -> float:
    """Return the best wall time in seconds of `number` calls of fn, over `repeat` rounds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best
