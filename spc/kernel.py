"""The numba rule kernel: the eight tests over a batch of new points for many charts at once.

Layout (CSR): the batch's points are grouped by chart; row r holds the points
`offsets[r]:offsets[r+1]` of chart `chart_of_row[r]`, oldest first. Per-chart
parameters and state live in small 2-D arrays indexed by chart id, so one
chart's row is one or two cache lines. The state carries the run lengths and
the 2σ/1σ history registers across ticks, so a pattern that spans ticks is seen
exactly as if the whole series had arrived at once; the engine zeroes a chart's
state on a reset or limit change, so no window spans one.

The kernels are pure: arrays in, arrays out (the state arrays are updated in
place), no I/O, no Python objects.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Chart kinds (IPAR_KIND): how a raw input becomes the plotted statistic.
KIND_INDIVIDUAL = 0  # the value itself; its moving range goes to the dispersion check
KIND_EWMA = 1  # z = λ x + (1 - λ) z_prev, starting from the centre
KIND_SUBGROUP = 2  # the value is a subgroup mean; `disp` carries its R or S
# EWMA with exact limits: the t-th point since the reset has σ_z √(1 − (1 − λ)^(2t)), so
# every boundary sits at c + (b − c) √(1 − w) with w = (1 − λ)^(2t) carried in the state.
KIND_EWMA_EXACT = 3

# Output flag bits: bit t-1 is test t (1..8) on the plotted statistic.
DISPERSION_BIT = 1 << 8  # the dispersion chart (MR, R or S) beyond its limits

# FPAR columns (float64 parameters per chart)
F_CENTER, F_U1, F_L1, F_U2, F_L2, F_UK, F_LK, F_LAMBDA, F_DISP_UCL, F_DISP_LCL = range(10)
N_FPAR = 10
# IPAR columns (int64 parameters per chart)
I_MASK, I_KIND, I_K2, I_K3, I_K4, I_K5, I_K6, I_K7, I_K8 = range(9)
N_IPAR = 9
# IST columns (int64 state per chart)
S_N, S_SEQ, S_SIDE, S_MONO, S_ALT, S_IN1, S_OUT1, S_R2U, S_R2D, S_R1U, S_R1D = range(11)
N_IST = 11
# FST columns (float64 state per chart)
FS_PREV, FS_EWMA, FS_W = range(3)
N_FST = 3


@njit(cache=True)
def _popcount(x):
    c = 0
    while x:
        x &= x - 1
        c += 1
    return c


@njit(cache=True, nogil=True)  # nogil: the daemon may run a tick's batch off the event loop
def evaluate_batch(chart_of_row, offsets, values, disp, fpar, ipar, ist, fst,
                   flags, stats, seqs):
    """Run every enabled test on each new point; write flags, plotted statistic and sequence number."""
    for r in range(chart_of_row.shape[0]):
        c = chart_of_row[r]
        lo = offsets[r]
        hi = offsets[r + 1]
        if lo == hi:
            continue
        center = fpar[c, F_CENTER]
        u1 = fpar[c, F_U1]
        l1 = fpar[c, F_L1]
        u2 = fpar[c, F_U2]
        l2 = fpar[c, F_L2]
        uk = fpar[c, F_UK]
        lk = fpar[c, F_LK]
        lam = fpar[c, F_LAMBDA]
        r2 = (1.0 - lam) * (1.0 - lam)
        ducl = fpar[c, F_DISP_UCL]
        dlcl = fpar[c, F_DISP_LCL]
        mask = ipar[c, I_MASK]
        kind = ipar[c, I_KIND]
        k2 = ipar[c, I_K2]
        k3m1 = ipar[c, I_K3] - 1
        k4m1 = ipar[c, I_K4] - 1
        k5 = ipar[c, I_K5]
        k6 = ipar[c, I_K6]
        k7 = ipar[c, I_K7]
        k8 = ipar[c, I_K8]
        w5 = (np.int64(1) << (k5 + 1)) - 1
        w6 = (np.int64(1) << (k6 + 1)) - 1
        n = ist[c, S_N]
        seq = ist[c, S_SEQ]
        side = ist[c, S_SIDE]
        mono = ist[c, S_MONO]
        alt = ist[c, S_ALT]
        in1 = ist[c, S_IN1]
        out1 = ist[c, S_OUT1]
        r2u = ist[c, S_R2U]
        r2d = ist[c, S_R2D]
        r1u = ist[c, S_R1U]
        r1d = ist[c, S_R1D]
        prev = fst[c, FS_PREV]
        z = fst[c, FS_EWMA]
        w = fst[c, FS_W]
        # the boundaries each point is compared with (they move only for exact EWMA limits)
        bu1, bl1, bu2, bl2, buk, blk = u1, l1, u2, l2, uk, lk
        for i in range(lo, hi):
            x = values[i]
            f = 0
            if kind == KIND_EWMA:
                z = lam * x + (1.0 - lam) * z
                s = z
            elif kind == KIND_EWMA_EXACT:
                z = lam * x + (1.0 - lam) * z
                s = z
                w = w * r2
                fac = np.sqrt(1.0 - w)
                bu1 = center + (u1 - center) * fac
                bl1 = center + (l1 - center) * fac
                bu2 = center + (u2 - center) * fac
                bl2 = center + (l2 - center) * fac
                buk = center + (uk - center) * fac
                blk = center + (lk - center) * fac
            elif kind == KIND_INDIVIDUAL:
                s = x
                if n > 0:
                    mr = abs(x - prev)
                    if mr > ducl or mr < dlcl:
                        f |= DISPERSION_BIT
            else:
                s = x
                dv = disp[i]
                if dv > ducl or dv < dlcl:
                    f |= DISPERSION_BIT
            # Branch-free on purpose: on noisy data these comparisons are coin flips, and a
            # mispredicted branch costs more than computing both sides.
            # test 1: beyond K σ, strictly
            f |= (s > buk) | (s < blk)
            # test 2: K in a row strictly on one side; a point on the centre breaks it
            up = np.int64(s > center)
            dn = np.int64(s < center)
            side = up * (max(side, 0) + 1) - dn * (max(-side, 0) + 1)
            f |= np.int64(abs(side) >= k2) << 1
            # tests 3 and 4: consecutive differences (none before the first point since the
            # reset); an equal pair breaks both. alt > 0 means the previous difference was
            # non-zero, and then its sign is mono's.
            first = np.int64(n > 0)
            du = np.int64(s > prev) * first
            dd = np.int64(s < prev) * first
            flip = (np.int64(mono > 0) & dd) | (np.int64(mono < 0) & du)
            alt = (du | dd) * (1 + flip * alt)
            mono = du * (max(mono, 0) + 1) - dd * (max(-mono, 0) + 1)
            f |= np.int64(abs(mono) >= k3m1) << 2
            f |= np.int64(alt >= k4m1) << 3
            # test 5: K of the last K+1 beyond 2σ on the point's side (the point included)
            b2u = np.int64(s > bu2)
            b2d = np.int64(s < bl2)
            r2u = ((r2u << 1) | b2u) & w5
            r2d = ((r2d << 1) | b2d) & w5
            if (b2u and _popcount(r2u) >= k5) or (b2d and _popcount(r2d) >= k5):
                f |= 16
            # test 6: K of the last K+1 beyond 1σ on the point's side
            b1u = np.int64(s > bu1)
            b1d = np.int64(s < bl1)
            r1u = ((r1u << 1) | b1u) & w6
            r1d = ((r1d << 1) | b1d) & w6
            if (b1u and _popcount(r1u) >= k6) or (b1d and _popcount(r1d) >= k6):
                f |= 32
            # tests 7 and 8: K in a row within 1σ (exactly 1σ is within) / beyond 1σ, either side
            o = b1u | b1d
            in1 = (1 - o) * (in1 + 1)
            out1 = o * (out1 + 1)
            f |= np.int64(in1 >= k7) << 6
            f |= np.int64(out1 >= k8) << 7
            flags[i] = f & mask
            stats[i] = s
            seqs[i] = seq
            seq += 1
            n += 1
            prev = s
        ist[c, S_N] = n
        ist[c, S_SEQ] = seq
        ist[c, S_SIDE] = side
        ist[c, S_MONO] = mono
        ist[c, S_ALT] = alt
        ist[c, S_IN1] = in1
        ist[c, S_OUT1] = out1
        ist[c, S_R2U] = r2u
        ist[c, S_R2D] = r2d
        ist[c, S_R1U] = r1u
        ist[c, S_R1D] = r1d
        fst[c, FS_PREV] = prev
        fst[c, FS_EWMA] = z
        fst[c, FS_W] = w
    return flags


@njit(cache=True, nogil=True)
def push_history(chart_of_row, offsets, seqs, stats, ts, lots, hist_stat, hist_ts, hist_lot):
    """Write each row's newest points into its chart's ring buffer (slot = seq mod capacity)."""
    cap_mask = hist_stat.shape[1] - 1
    for r in range(chart_of_row.shape[0]):
        c = chart_of_row[r]
        lo = offsets[r]
        hi = offsets[r + 1]
        start = max(lo, hi - hist_stat.shape[1])
        for i in range(start, hi):
            p = seqs[i] & cap_mask
            hist_stat[c, p] = stats[i]
            hist_ts[c, p] = ts[i]
            hist_lot[c, p] = lots[i]
    return hist_stat


def empty_state(n_charts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return zeroed (fpar, ipar, ist, fst) arrays for n charts."""
    return (np.zeros((n_charts, N_FPAR)), np.zeros((n_charts, N_IPAR), np.int64),
            np.zeros((n_charts, N_IST), np.int64), np.zeros((n_charts, N_FST)))


def warm() -> None:
    """Compile the kernels with tiny inputs (the daemon calls this before READY)."""
    fpar, ipar, ist, fst = empty_state(1)
    fpar[0] = (0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.2, np.inf, -np.inf)
    ipar[0] = (0x1FF, KIND_INDIVIDUAL, 9, 6, 14, 2, 4, 15, 8)
    rows = np.zeros(1, np.int64)
    offsets = np.array([0, 3], np.int64)
    values = np.array([0.5, -0.5, 4.0])
    out_f = np.zeros(3, np.uint16)
    out_s = np.zeros(3)
    out_q = np.zeros(3, np.int64)
    evaluate_batch(rows, offsets, values, values, fpar, ipar, ist, fst, out_f, out_s, out_q)
    hist = np.zeros((1, 4))
    push_history(rows, offsets, out_q, out_s, values, np.zeros(3, np.int32), hist,
                 np.zeros((1, 4)), np.zeros((1, 4), np.int32))
