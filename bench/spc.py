"""SPC rule engine: points/s through all eight Nelson tests for 100,000 charts, vs plain Python."""

from __future__ import annotations

import time

import numpy as np

from bench.common import emit, progress, standard_args
from spc import kernel as kn
from spc.config import ChartSpec, RuleParams, SpcConfig
from spc.engine import SpcEngine
from spc.reference import ReferenceChart, Zones


def _extra(p) -> None:
    p.add_argument("--charts", type=int, default=None, help="charts (default 100000, quick 10000)")
    p.add_argument("--points", type=int, default=10, help="new points per chart per tick")
    p.add_argument("--ticks", type=int, default=None, help="ticks (default 5, quick 2)")
    p.add_argument("--ref-charts", type=int, default=None,
                   help="charts the Python reference runs (default 2000, quick 300)")


def _series(rng: np.random.Generator, n_charts: int, n_points: int) -> np.ndarray:
    """Return (charts, points) values: in-control noise with a shift or drift on some charts."""
    x = rng.standard_normal((n_charts, n_points))
    shifted = rng.random(n_charts) < 0.05
    x[shifted] += 1.5
    drift = rng.random(n_charts) < 0.02
    x[drift] += np.linspace(0.0, 3.0, n_points)
    return np.round(x, 3)  # instrument resolution: ties happen, as on real tools


def _kernel_state(n: int) -> tuple:
    fpar, ipar, ist, fst = kn.empty_state(n)
    z = Zones.from_sigma(0.0, 1.0)
    fpar[:] = (z.center, z.u1, z.l1, z.u2, z.l2, z.uk, z.lk, 0.2, 3.686, -np.inf)
    ipar[:] = (0x1FF, kn.KIND_INDIVIDUAL, 9, 6, 14, 2, 4, 15, 8)
    return fpar, ipar, ist, fst


def main(argv: list[str] | None = None) -> int:
    args = standard_args("spc", argv, _extra)
    n_charts = args.charts or (10_000 if args.quick else 100_000)
    ticks = args.ticks or (2 if args.quick else 5)
    per = args.points
    n_ref = min(n_charts, args.ref_charts or (300 if args.quick else 2_000))
    rng = np.random.default_rng(7)
    data = [_series(rng, n_charts, per) for _ in range(ticks)]
    n_pts = n_charts * per
    rows = np.arange(n_charts, dtype=np.int64)
    offsets = np.arange(0, n_pts + 1, per, dtype=np.int64)
    ts = np.zeros(n_pts)
    lots = np.zeros(n_pts, np.int32)
    kn.warm()

    # -- kernel: the eight tests + history ring, on one core, state carried across ticks
    progress(f"kernel: {n_charts} charts x {per} points x {ticks} ticks")
    h = 16
    best = float("inf")
    ref_flags = None
    for rep in range(1 if args.quick else 5):
        fpar, ipar, ist, fst = _kernel_state(n_charts)
        hs, ht, hl = np.zeros((n_charts, h)), np.zeros((n_charts, h)), np.zeros((n_charts, h), np.int32)
        flags = np.empty(n_pts, np.uint16)
        stats = np.empty(n_pts)
        seqs = np.empty(n_pts, np.int64)
        all_flags = []
        elapsed = 0.0
        for t in range(ticks):
            vals = data[t].reshape(-1)
            t0 = time.perf_counter()
            kn.evaluate_batch(rows, offsets, vals, vals, fpar, ipar, ist, fst, flags, stats, seqs)
            kn.push_history(rows, offsets, seqs, stats, ts, lots, hs, ht, hl)
            elapsed += time.perf_counter() - t0
            all_flags.append(flags.reshape(n_charts, per)[:n_ref].copy())
        best = min(best, elapsed)
        ref_flags = np.concatenate(all_flags, axis=1)
        progress(f"kernel round {rep + 1}: {ticks * n_pts / elapsed / 1e6:.1f} M points/s")
    kernel_pps = ticks * n_pts / best

    # -- plain-Python reference on a subset, point by point (same history semantics)
    progress(f"reference: {n_ref} charts (a subset; the rate is per point)")
    z = Zones(center=0.0, u1=1.0, l1=-1.0, u2=2.0, l2=-2.0, uk=3.0, lk=-3.0, disp_ucl=3.686)
    charts = [ReferenceChart(z, RuleParams(), (1, 2, 3, 4, 5, 6, 7, 8), dispersion=True)
              for _ in range(n_ref)]
    mismatches = 0
    t0 = time.perf_counter()
    for t in range(ticks):
        block = data[t][:n_ref].tolist()
        for c, (chart, row) in enumerate(zip(charts, block, strict=True)):
            for j, x in enumerate(row):
                fired = chart.push(x)
                bits = 0
                for test in fired:
                    bits |= 1 << (8 if test == 9 else test - 1)
                if bits != ref_flags[c, t * per + j]:
                    mismatches += 1
    ref_pps = n_ref * per * ticks / (time.perf_counter() - t0)

    # -- the kernel's own code, interpreted by CPython (what numba alone buys)
    n_py = max(1, n_ref // 10)
    progress(f"kernel code without numba: {n_py} charts")
    fpar, ipar, ist, fst = _kernel_state(n_py)
    sub_rows = np.arange(n_py, dtype=np.int64)
    sub_offsets = np.arange(0, n_py * per + 1, per, dtype=np.int64)
    t0 = time.perf_counter()
    for t in range(ticks):
        vals = np.ascontiguousarray(data[t][:n_py]).reshape(-1)
        kn.evaluate_batch.py_func(sub_rows, sub_offsets, vals, vals, fpar, ipar, ist, fst,
                                  np.empty(vals.size, np.uint16), np.empty(vals.size),
                                  np.empty(vals.size, np.int64))
    py_pps = n_py * per * ticks / (time.perf_counter() - t0)
    if mismatches:
        progress(f"ERROR: kernel and reference disagree on {mismatches} points")
        return 1

    # -- the daemon's whole path: add_many + evaluate (CSR build, kernel, Violation objects)
    progress("engine: add_many + evaluate per tick")
    # every firing becomes a Violation here (no storm folding): the full cost is measured
    eng = SpcEngine(SpcConfig(default=ChartSpec(center=0.0, sigma=1.0),
                              max_violations_per_tick=10**9))
    for i in range(n_charts):
        eng.register(f"T{i // 50:05d}/PM{i % 5}/p{i % 10}")
    ids = np.repeat(rows, per)
    eng.evaluate()
    n_viol = 0
    t0 = time.perf_counter()
    for t in range(ticks):
        eng.add_many(ids, data[t].reshape(-1), 1.0e9 + t)
        n_viol += len(eng.evaluate().violations)
    eng_pps = ticks * n_pts / (time.perf_counter() - t0)
    progress(f"engine: {n_viol} violations ({n_viol / (ticks * n_pts):.2%} of points)")

    base = f"python_reference_per_point({n_ref}_charts)"
    emit("spc", f"kernel_points_per_s_{n_charts}_charts_8_tests", kernel_pps, "points/s", base,
         ref_pps, as_json=args.json)
    emit("spc", f"engine_evaluate_points_per_s_{n_charts}_charts", eng_pps, "points/s", base,
         ref_pps, as_json=args.json)
    emit("spc", f"kernel_points_per_s_{n_charts}_charts_vs_same_code_cpython", kernel_pps,
         "points/s", f"kernel_code_without_numba_per_point({n_py}_charts)", py_pps,
         as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
