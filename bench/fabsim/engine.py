"""The discrete-event simulation kernel: one numba function, a heap of events over arrays.

Pure: arrays in, arrays out, no I/O. Times are minutes. Every dispatch
decision calls the daemon's scorer kernels (`dispatch.scorer.candidate_key`,
`key_better`, `block_code`, `setup_left_to_others`) for each (idle tool, waiting lot) pair, with the
policy compiled per family by `bench.fabsim.policy`.

Event kinds: a tool finishes its job (MDONE), a lot finishes its step (LDONE),
a time-based calendar fires (CAL: breakdown or PM), a down tool is back (UP).
Lots with a lot-to-lens dedication (SVESTN/FORSTEP) only run on the tool that
ran the pinning step, in both modes.
Lot releases come from a sorted array, not the heap.

Modes (`compat`):
- 1, PySCFabSim: only full batches start (lots batch by step name); queue-time limits only raise priority
  (and, as PySCFabSim reads SMT2020 files, every lot that has been dispatched once
  keeps that raised flag); breakdowns and PMs only delay the job on a busy tool;
  an idle "down" tool can be dispatched to; rework at most once per lot per step;
  a minimum run is re-armed by every lot of that setup and may be broken after 5
  refusals.
- 0, faithful: a down tool takes no lots (a PM on a busy tool starts when the job
  ends; a breakdown pauses the job); batches start at the minimum size (or when
  the policy's batch rule lets them go); queue-time windows are tracked per lot,
  the policy sees each lot's deadline and may gate starts into a window whose
  downstream queue is too long (dispatch.scorer.block_code), and a lot that
  starts the closing step late counts as a violation; rework is drawn on every
  pass; a minimum run holds while lots of that setup wait; lots batch by route
  step (SMT2020's crit_sameroutestep).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dispatch.scorer import (
    BLOCK_BATCH_WAIT,
    BLOCK_OK,
    block_code,
    candidate_key,
    key_better,
    setup_left_to_others,
)

EV_MDONE = 0
EV_LDONE = 1
EV_CAL = 2
EV_UP = 3

Q_FREE = 0
Q_WAIT = 1
Q_BUSY = 2
Q_DONE = 3

INF = np.inf


@njit(cache=True)
def _heap_push(ht, hs, hk, ha, hb, n, seq, time, kind, a, b):
    i = n
    ht[i] = time
    hs[i] = seq
    hk[i] = kind
    ha[i] = a
    hb[i] = b
    while i > 0:
        p = (i - 1) >> 1
        if ht[p] < ht[i] or (ht[p] == ht[i] and hs[p] < hs[i]):
            break
        ht[p], ht[i] = ht[i], ht[p]
        hs[p], hs[i] = hs[i], hs[p]
        hk[p], hk[i] = hk[i], hk[p]
        ha[p], ha[i] = ha[i], ha[p]
        hb[p], hb[i] = hb[i], hb[p]
        i = p
    return n + 1


@njit(cache=True)
def _heap_pop(ht, hs, hk, ha, hb, n):
    n -= 1
    ht[0] = ht[n]
    hs[0] = hs[n]
    hk[0] = hk[n]
    ha[0] = ha[n]
    hb[0] = hb[n]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        c = left
        right = left + 1
        if right < n and (ht[right] < ht[left] or (ht[right] == ht[left] and hs[right] < hs[left])):
            c = right
        if ht[i] < ht[c] or (ht[i] == ht[c] and hs[i] < hs[c]):
            break
        ht[c], ht[i] = ht[i], ht[c]
        hs[c], hs[i] = hs[i], hs[c]
        hk[c], hk[i] = hk[i], hk[c]
        ha[c], ha[i] = ha[i], ha[c]
        hb[c], hb[i] = hb[i], hb[c]
        i = c
    return n


@njit(cache=True)
def _fail_alike(m, s0, s1, has_ded, tool_usable, tool_setup, tool_minrun_left, tool_minrun_setup):
    # no lot (or no batch) for tool m: the same holds for idle tools of its family in the same state
    tool_usable[m] = False
    if has_ded:
        return
    for mm in range(s0, s1):
        if (tool_usable[mm] and tool_setup[mm] == tool_setup[m]
                and tool_minrun_left[mm] == tool_minrun_left[m]
                and tool_minrun_setup[mm] == tool_minrun_setup[m]):
            tool_usable[mm] = False


@njit(cache=True)
def _q_remove(q, q_len, lot_qpos, f, lot):
    pos = lot_qpos[lot]
    last = q[f, q_len[f] - 1]
    q[f, pos] = last
    lot_qpos[last] = pos
    q_len[f] -= 1
    lot_qpos[lot] = -1


@njit(cache=True)
def _sample(mean, half):
    if half > 0.0:
        return np.random.uniform(mean - half, mean + half)
    return mean


@njit(cache=True)
def _group_better(ka, na, bmin_a, bmax_a, arr_a, due_a, id_a, kb, nb, bmin_b, bmax_b, arr_b, due_b, id_b):
    # PySCFabSim's batch order: levels 0-1, fill (fuller first), reaches minimum, other levels
    for lv in range(min(2, ka.shape[0])):
        if ka[lv] != kb[lv]:
            return ka[lv] > kb[lv]
    fa = min(1.0, na / bmax_a)
    fb = min(1.0, nb / bmax_b)
    if fa != fb:
        return fa > fb
    ua = na >= bmin_a
    ub = nb >= bmin_b
    if ua != ub:
        return ua
    for lv in range(2, ka.shape[0]):
        if ka[lv] != kb[lv]:
            return ka[lv] > kb[lv]
    if arr_a != arr_b:
        return arr_a < arr_b
    if due_a != due_b:
        return due_a < due_b
    return id_a < id_b


@njit(cache=True, nogil=True)
def simulate(
    # families and tools
    fam_tool_start, fam_tool_count, fam_load, fam_unload, fam_cascading, tool_family,
    # steps
    route_start, route_len, st_family, st_bkey, st_pt_mean, st_pt_half, st_cascade, st_bmin, st_bmax,
    st_setup, st_setup_time, st_rework_to, st_rework_pct, st_rework_slot, st_sample_pct, st_cqt_to,
    st_cqt_min, st_ded_set, st_ded_use, st_remaining, st_tr_mean, st_tr_half,
    # setups
    setup_matrix, setup_min_run,
    # calendars
    cal_tool, cal_is_down, cal_first, cal_every, cal_rep_mean, cal_rep_half,
    tool_pm_start, tool_pm_count, pm_every, pm_first, pm_rep_mean, pm_rep_half,
    # lots
    lot_route, lot_first_step, lot_priority, lot_pieces, lot_release, lot_due,
    # run
    # policy (dispatch.config.PolicyArrays, one row per family)
    pol_level, pol_weight, pol_qt_horizon, pol_qt_gate, pol_qt_gate_factor, pol_batch_fill,
    pol_batch_max_wait, pol_balance_target, pol_deliver_flow_factor, pol_slack_flow_factor,
    pol_setup_switch_lots,
    # run
    horizon, compat, seed, pieces_per_lot, progress, trace_steps,
):
    """Run the fab until `horizon` minutes; return per-lot, per-tool and per-day results."""
    np.random.seed(seed)
    n_fam = fam_tool_start.shape[0]
    n_tools = tool_family.shape[0]
    n_lots = lot_route.shape[0]
    n_names = 0
    for s in range(st_bkey.shape[0]):
        if st_bkey[s] + 1 > n_names:
            n_names = st_bkey[s] + 1
    n_slots = 0
    for s in range(st_rework_slot.shape[0]):
        if st_rework_slot[s] + 1 > n_slots:
            n_slots = st_rework_slot[s] + 1
    max_b = 1
    for s in range(st_bmax.shape[0]):
        if st_bmax[s] > max_b:
            max_b = st_bmax[s]

    # heap
    cap = 4 * (n_tools * (max_b + 4) + cal_tool.shape[0]) + 2 * n_lots + 1024
    ht = np.empty(cap, np.float64)
    hs = np.empty(cap, np.int64)
    hk = np.empty(cap, np.int32)
    ha = np.empty(cap, np.int32)
    hb = np.empty(cap, np.int32)
    hn = 0
    seq = 0

    # family queues
    qcap = min(n_lots, 32768)
    q = np.empty((n_fam, qcap), np.int32)
    q_len = np.zeros(n_fam, np.int32)
    fam_dirty = np.zeros(n_fam, np.bool_)
    dirty = np.empty(n_fam, np.int32)
    n_dirty = 0

    # lots
    lot_state = np.zeros(n_lots, np.int8)
    lot_step = lot_first_step.copy()
    lot_qpos = np.full(n_lots, -1, np.int32)
    lot_free_since = np.zeros(n_lots, np.float64)
    lot_epoch = np.zeros(n_lots, np.int32)
    lot_done_time = np.zeros(n_lots, np.float64)
    lot_tool = np.full(n_lots, -1, np.int32)
    lot_cqt = np.zeros(n_lots, np.int8)
    lot_cqt_to = np.full(n_lots, -1, np.int32)
    lot_cqt_from = np.full(n_lots, -1, np.int32)
    lot_cqt_deadline = np.full(n_lots, INF, np.float64)
    lot_done_at = np.full(n_lots, np.nan, np.float64)
    lot_wait = np.zeros(n_lots, np.float64)
    lot_steps_done = np.zeros(n_lots, np.int32)
    # trace_steps[i, k]: the k-th step lot i started (lots 0..trace_steps.shape[0]-1), -1 after
    n_trace = trace_steps.shape[0]
    trace_len = trace_steps.shape[1]
    lot_starts = np.zeros(n_lots, np.int32)
    rw_done = np.zeros((n_lots, max(1, n_slots)), np.uint8)
    n_ded = 0
    for s in range(st_ded_use.shape[0]):
        if st_ded_use[s] + 1 > n_ded:
            n_ded = st_ded_use[s] + 1
    lot_ded = np.full((n_lots, max(1, n_ded)), -1, np.int16)

    # tools
    tool_busy = np.zeros(n_tools, np.bool_)
    tool_usable = np.zeros(n_tools, np.bool_)
    tool_epoch = np.zeros(n_tools, np.int32)
    tool_mdone = np.zeros(n_tools, np.float64)
    tool_setup = np.full(n_tools, -1, np.int32)
    tool_minrun_left = np.full(n_tools, -1, np.int32)
    tool_minrun_setup = np.full(n_tools, -1, np.int32)
    tool_failed = np.zeros(n_tools, np.int32)
    tool_job = np.full((n_tools, max_b), -1, np.int32)
    tool_job_n = np.zeros(n_tools, np.int32)
    tool_down_until = np.zeros(n_tools, np.float64)
    tool_pm_owed = np.zeros(n_tools, np.float64)
    pm_until = pm_first.copy()
    busy_min = np.zeros(n_tools, np.float64)
    setup_min = np.zeros(n_tools, np.float64)
    pm_min = np.zeros(n_tools, np.float64)
    down_min = np.zeros(n_tools, np.float64)
    fam_wait = np.zeros(n_fam, np.float64)
    fam_visits = np.zeros(n_fam, np.int64)

    # scratch for one decision
    n_levels = 1
    for g in range(pol_level.shape[0]):
        for r in range(pol_level.shape[1]):
            if pol_level[g, r] + 1 > n_levels:
                n_levels = pol_level[g, r] + 1
    keys = np.zeros((qcap, n_levels), np.float64)
    feat = np.zeros(pol_level.shape[1], np.float64)
    blocked = np.zeros(qcap, np.bool_)
    g_count = np.zeros(n_names, np.int32)
    g_best = np.full(n_names, -1, np.int32)
    g_oldest = np.zeros(n_names, np.float64)
    touched = np.empty(n_names, np.int32)
    # queued work per family (minutes) and tools up, for the scorer's balance and QT-gate terms
    # (as dispatch.scorer.prepare: busy time left + queued work, per tool up)
    fam_work = np.zeros(n_fam, np.float64)
    fam_qt_work = np.zeros(n_fam, np.float64)     # work of queue-time-window lots queued
    fam_busy_end = np.zeros(n_fam, np.float64)    # sum of the busy tools' done times
    fam_busy_n = np.zeros(n_fam, np.int32)
    fam_up = fam_tool_count.copy()
    tool_is_down = np.zeros(n_tools, np.bool_)
    bk_incoming = np.zeros(n_names, np.int64)     # wafers one step before a batch step, per batch key
    fam_has_ded = np.zeros(n_fam, np.bool_)
    for s in range(st_ded_use.shape[0]):
        if st_ded_use[s] >= 0:
            fam_has_ded[st_family[s]] = True
    members = np.empty(qcap, np.int32)
    setup_waiting = np.zeros(max(1, setup_min_run.shape[0]), np.int32)   # lots in the queue, per setup
    setup_holders = np.zeros(max(1, setup_min_run.shape[0]), np.int32)   # family tools up in it
    chosen = np.empty(max_b, np.int32)

    n_days = int(horizon // 1440.0) + 2
    wip_day = np.zeros(n_days, np.int32)
    out_day = np.zeros(n_days, np.int32)
    n_in = 0
    n_out = 0
    decisions = 0
    cqt_violations = 0
    status = 0

    # calendars: first occurrences
    for c in range(cal_tool.shape[0]):
        first = cal_first[c]
        if first < 0.0:
            first = np.random.exponential(-first)
        hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, first, EV_CAL, c, 0)
        seq += 1
    cal_base = cal_first.copy()
    for c in range(cal_tool.shape[0]):
        if cal_base[c] < 0.0:
            cal_base[c] = 0.0

    t = 0.0
    next_rel = 0
    day = 0
    while True:
        t_ev = ht[0] if hn > 0 else INF
        t_rel = lot_release[next_rel] if next_rel < n_lots else INF
        if t_rel < 0.0:
            t_rel = 0.0
        t_next = min(t_ev, t_rel)
        if t_next > horizon or t_next == INF:
            break
        t = t_next
        while day * 1440.0 < t and day < n_days:
            wip_day[day] = n_in - n_out
            out_day[day] = n_out
            day += 1
        progress[0] = t

        # --- apply every event at time t ---------------------------------------------------
        while True:
            is_rel = False
            if next_rel < n_lots and max(lot_release[next_rel], 0.0) <= t:
                is_rel = True
            elif hn > 0 and ht[0] <= t:
                is_rel = False
            else:
                break
            lot = -1
            cur = -1
            check_rework = False
            direct = False
            if is_rel:
                lot = next_rel
                next_rel += 1
                n_in += 1
                cur = lot_first_step[lot] - 1
                check_rework = False
            else:
                kind = hk[0]
                a = ha[0]
                b = hb[0]
                hn = _heap_pop(ht, hs, hk, ha, hb, hn)
                if kind == EV_MDONE:
                    m = a
                    if b != tool_epoch[m] or not tool_busy[m]:
                        continue
                    tool_busy[m] = False
                    tool_job_n[m] = 0
                    f = tool_family[m]
                    fam_busy_end[f] -= tool_mdone[m]
                    fam_busy_n[f] -= 1
                    if compat == 0 and tool_pm_owed[m] > 0.0:
                        tool_down_until[m] = t + tool_pm_owed[m]
                        tool_pm_owed[m] = 0.0
                        if not tool_is_down[m]:
                            tool_is_down[m] = True
                            fam_up[f] -= 1
                        hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, tool_down_until[m], EV_UP, m, 0)
                        seq += 1
                        continue
                    if q_len[f] > 0:
                        tool_usable[m] = True
                        if not fam_dirty[f]:
                            fam_dirty[f] = True
                            dirty[n_dirty] = f
                            n_dirty += 1
                    continue
                if kind == EV_UP:
                    m = a
                    if tool_busy[m] or tool_down_until[m] > t:
                        continue
                    f = tool_family[m]
                    if tool_is_down[m]:
                        tool_is_down[m] = False
                        fam_up[f] += 1
                    if q_len[f] > 0:
                        tool_usable[m] = True
                        if not fam_dirty[f]:
                            fam_dirty[f] = True
                            dirty[n_dirty] = f
                            n_dirty += 1
                    continue
                if kind == EV_CAL:
                    c = a
                    m = cal_tool[c]
                    if cal_is_down[c] == 1:
                        length = np.random.exponential(cal_rep_mean[c])
                        down_min[m] += length
                    else:
                        length = _sample(cal_rep_mean[c], cal_rep_half[c])
                        pm_min[m] += length
                    if tool_busy[m] and (compat == 1 or cal_is_down[c] == 1):
                        # the job on the tool waits for the repair
                        tool_epoch[m] += 1
                        tool_mdone[m] += length
                        fam_busy_end[tool_family[m]] += length
                        hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, tool_mdone[m], EV_MDONE, m, tool_epoch[m])
                        seq += 1
                        for j in range(tool_job_n[m]):
                            lj = tool_job[m, j]
                            if lot_state[lj] == Q_BUSY and lot_tool[lj] == m:
                                lot_epoch[lj] += 1
                                lot_done_time[lj] += length
                                hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, lot_done_time[lj], EV_LDONE, lj,
                                                lot_epoch[lj])
                                seq += 1
                    elif tool_busy[m]:
                        tool_pm_owed[m] += length        # faithful PM: starts when the job ends
                    elif compat == 0:
                        tool_down_until[m] = max(tool_down_until[m], t) + length
                        tool_usable[m] = False
                        if not tool_is_down[m]:
                            tool_is_down[m] = True
                            fam_up[tool_family[m]] -= 1
                        hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, tool_down_until[m], EV_UP, m, 0)
                        seq += 1
                    if cal_is_down[c] == 1 or compat == 1:
                        # PySCFabSim: the next one is due a full interval after this repair
                        if cal_is_down[c] == 1:
                            nxt = t + length + np.random.exponential(cal_every[c])
                        else:
                            nxt = t + length + cal_every[c]
                    else:
                        cal_base[c] = cal_base[c] + cal_every[c]
                        nxt = cal_base[c]
                    hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, nxt, EV_CAL, c, 0)
                    seq += 1
                    continue
                if kind == EV_LDONE:
                    lot = a
                    if b != lot_epoch[lot] or lot_state[lot] != Q_BUSY:
                        continue
                    cur = lot_step[lot]
                    lot_steps_done[lot] += 1
                    check_rework = True
                    if cur + 1 < route_start[lot_route[lot]] + route_len[lot_route[lot]] and st_bmax[cur + 1] > 1:
                        bk_incoming[st_bkey[cur + 1]] -= lot_pieces[lot]
            # --- move `lot` on from step `cur` (released lots: cur = the step before) -------
            r = lot_route[lot]
            end = route_start[r] + route_len[r]
            queued = direct
            while not direct:
                nxt = cur + 1
                if check_rework and st_rework_to[cur] >= 0:
                    slot = st_rework_slot[cur]
                    if compat == 1:
                        if rw_done[lot, slot] == 0:
                            rw_done[lot, slot] = 1
                            if np.random.uniform(0.0, 100.0) <= st_rework_pct[cur]:
                                nxt = st_rework_to[cur]
                    elif np.random.uniform(0.0, 100.0) <= st_rework_pct[cur]:
                        nxt = st_rework_to[cur]
                check_rework = True
                if nxt >= end:
                    break
                cur = nxt
                if st_sample_pct[cur] >= 100.0 or np.random.uniform(0.0, 100.0) <= st_sample_pct[cur]:
                    queued = True
                    break
            if not queued:
                lot_state[lot] = Q_DONE
                lot_done_at[lot] = t
                n_out += 1
                continue
            if compat == 0 and lot_cqt_to[lot] >= 0 and cur > lot_cqt_to[lot]:
                lot_cqt[lot] = 0          # left the window by rework or sampling
                lot_cqt_to[lot] = -1
                lot_cqt_deadline[lot] = INF
            lot_step[lot] = cur
            lot_state[lot] = Q_WAIT
            lot_free_since[lot] = t
            f = st_family[cur]
            if q_len[f] >= qcap:
                status = 2
                break
            q[f, q_len[f]] = lot
            lot_qpos[lot] = q_len[f]
            fam_work[f] += st_pt_mean[cur] / st_bmax[cur]
            if (lot_cqt[lot] != 0) if compat == 1 else (lot_cqt_to[lot] >= 0):
                fam_qt_work[f] += st_pt_mean[cur] / st_bmax[cur]
            if cur + 1 < end and st_bmax[cur + 1] > 1:
                bk_incoming[st_bkey[cur + 1]] += lot_pieces[lot]
            q_len[f] += 1
            s0 = fam_tool_start[f]
            for m in range(s0, s0 + fam_tool_count[f]):
                if not tool_busy[m] and (compat == 1 or tool_down_until[m] <= t):
                    tool_usable[m] = True
            if not fam_dirty[f]:
                fam_dirty[f] = True
                dirty[n_dirty] = f
                n_dirty += 1
        if status != 0:
            break

        # --- dispatch on every family that changed ----------------------------------------
        while n_dirty > 0:
            n_dirty -= 1
            f = dirty[n_dirty]
            fam_dirty[f] = False
            s0 = fam_tool_start[f]
            s1 = s0 + fam_tool_count[f]
            while True:
                m = -1
                for mm in range(s0, s1):
                    if tool_usable[mm]:
                        m = mm
                        break
                if m < 0:
                    break
                n = q_len[f]
                if n == 0:
                    for mm in range(s0, s1):
                        tool_usable[mm] = False
                    break
                # the setup rule's counts: family tools up in each setup, lots needing it
                switch_lots = pol_setup_switch_lots[f]
                if switch_lots > 0.0:
                    setup_waiting[:] = 0
                    setup_holders[:] = 0
                    for mm in range(s0, s1):
                        if tool_setup[mm] >= 0 and not tool_is_down[mm]:
                            setup_holders[tool_setup[mm]] += 1
                # batch bookkeeping: lots (and the oldest arrival) per batch key in the queue
                nt = 0
                for i in range(n):
                    lot = q[f, i]
                    s = lot_step[lot]
                    if switch_lots > 0.0 and st_setup[s] >= 0:
                        setup_waiting[st_setup[s]] += 1
                    if st_bmax[s] > 1:
                        g = st_bkey[s]
                        if g_count[g] == 0:
                            touched[nt] = g
                            nt += 1
                            g_oldest[g] = lot_free_since[lot]
                        g_count[g] += 1
                        if lot_free_since[lot] < g_oldest[g]:
                            g_oldest[g] = lot_free_since[lot]
                # score every waiting lot for tool m with the daemon's scorer
                best = -1
                lev = pol_level[f]
                wt = pol_weight[f]
                for i in range(n):
                    lot = q[f, i]
                    s = lot_step[lot]
                    # lot-to-lens dedication: only the tool that ran the pinning step
                    if st_ded_use[s] >= 0 and lot_ded[lot, st_ded_use[s]] >= 0 and lot_ded[lot, st_ded_use[s]] != m:
                        blocked[i] = True
                        continue
                    need = st_setup[s]
                    minrun = 0.0
                    if tool_minrun_left[m] >= 0 and tool_minrun_setup[m] != need:
                        minrun = -1.0
                    hot = 0
                    if lot_priority[lot] >= 30:
                        hot = 2
                    elif lot_priority[lot] >= 20:
                        hot = 1
                    su = 0.0
                    if need >= 0 and tool_setup[m] != need:
                        if setup_left_to_others(need, tool_setup[m], hot, setup_holders[need],
                                                setup_waiting[need], switch_lots):
                            blocked[i] = True
                            continue
                        if st_setup_time[s] >= 0.0:
                            su = st_setup_time[s]
                        else:
                            su = setup_matrix[tool_setup[m] + 1, need]
                    bwaf = 0
                    bmaxw = 0
                    oldest = t
                    if st_bmax[s] > 1:
                        bwaf = g_count[st_bkey[s]] * pieces_per_lot
                        bmaxw = st_bmax[s] * pieces_per_lot
                        oldest = g_oldest[st_bkey[s]]
                    # the tool group that closes this step's queue-time window, and the next step's
                    qt_wait = -1.0
                    if st_cqt_to[s] >= 0:
                        fq = st_family[st_cqt_to[s]]
                        qt_wait = (fam_busy_end[fq] - fam_busy_n[fq] * t + fam_qt_work[fq]) / max(1, fam_up[fq])
                    next_wait = -1.0
                    if s + 1 < route_start[lot_route[lot]] + route_len[lot_route[lot]]:
                        fn = st_family[s + 1]
                        next_wait = (fam_busy_end[fn] - fam_busy_n[fn] * t + fam_work[fn]) / max(1, fam_up[fn])
                    blk = block_code(t, False, pol_qt_gate[f], pol_qt_gate_factor[f],
                                     st_cqt_min[s] if st_cqt_to[s] >= 0 else 0.0, qt_wait, bmaxw,
                                     st_bmin[s] * pieces_per_lot, bwaf, oldest, pol_batch_fill[f],
                                     pol_batch_max_wait[f], bk_incoming[st_bkey[s]] if st_bmax[s] > 1 else 0)
                    # compat: PySCFabSim's batch builder, not the policy, decides when a batch goes
                    if blk == BLOCK_BATCH_WAIT and compat == 1:
                        blk = BLOCK_OK
                    blocked[i] = blk != BLOCK_OK
                    if blocked[i]:
                        continue
                    if compat == 1:
                        qt_on = lot_cqt[lot] != 0
                    else:
                        qt_on = lot_cqt_to[lot] >= 0
                    candidate_key(t, lev, wt, pol_qt_horizon[f], pol_balance_target[f],
                                  pol_deliver_flow_factor[f], pol_slack_flow_factor[f], hot,
                                  lot_priority[lot], lot_due[lot], lot_free_since[lot], qt_on,
                                  lot_cqt_deadline[lot], st_remaining[s], bwaf, bmaxw, next_wait, minrun,
                                  su, feat, keys[i])
                    if best < 0 or key_better(keys[i], lot_free_since[lot], lot_due[lot], lot, keys[best],
                                              lot_free_since[q[f, best]], lot_due[q[f, best]], q[f, best]):
                        best = i
                nb = 0
                if best < 0:
                    for j in range(nt):
                        g_count[touched[j]] = 0
                    _fail_alike(m, s0, s1, fam_has_ded[f], tool_usable, tool_setup, tool_minrun_left,
                                tool_minrun_setup)
                    continue
                s = lot_step[q[f, best]]
                if st_bmax[s] > 1:
                    # batch: pick the batch key, then its best lots
                    bg = st_bkey[s]
                    if compat == 1:
                        # PySCFabSim: groups ordered by their best lot's first two levels, then
                        # fill, then "reaches the minimum", then the remaining levels
                        for j in range(nt):
                            g_best[touched[j]] = -1
                        for i in range(n):
                            if blocked[i]:
                                continue
                            lot = q[f, i]
                            if st_bmax[lot_step[lot]] <= 1:
                                continue
                            g = st_bkey[lot_step[lot]]
                            b = g_best[g]
                            if b < 0 or key_better(keys[i], lot_free_since[lot], lot_due[lot], lot, keys[b],
                                                   lot_free_since[q[f, b]], lot_due[q[f, b]], q[f, b]):
                                g_best[g] = i
                        bg = -1
                        for j in range(nt):
                            g = touched[j]
                            i = g_best[g]
                            if i < 0:
                                continue
                            if bg < 0:
                                bg = g
                                continue
                            ib = g_best[bg]
                            sg = lot_step[q[f, i]]
                            sb = lot_step[q[f, ib]]
                            if _group_better(keys[i], g_count[g], st_bmin[sg], st_bmax[sg],
                                             lot_free_since[q[f, i]], lot_due[q[f, i]], q[f, i],
                                             keys[ib], g_count[bg], st_bmin[sb], st_bmax[sb],
                                             lot_free_since[q[f, ib]], lot_due[q[f, ib]], q[f, ib]):
                                bg = g
                    nm = 0
                    for i in range(n):
                        if not blocked[i] and st_bmax[lot_step[q[f, i]]] > 1 and st_bkey[lot_step[q[f, i]]] == bg:
                            members[nm] = i
                            nm += 1
                    sg = lot_step[q[f, members[0]]]
                    need_n = st_bmax[sg] if compat == 1 else st_bmin[sg]
                    if nm >= need_n:
                        take = min(nm, st_bmax[sg])
                        for j in range(take):
                            bi = j
                            for jj in range(j + 1, nm):
                                x = members[jj]
                                y = members[bi]
                                if key_better(keys[x], lot_free_since[q[f, x]], lot_due[q[f, x]], q[f, x],
                                              keys[y], lot_free_since[q[f, y]], lot_due[q[f, y]], q[f, y]):
                                    bi = jj
                            members[j], members[bi] = members[bi], members[j]
                            chosen[j] = q[f, members[j]]
                        nb = take
                else:
                    chosen[0] = q[f, best]
                    nb = 1
                for j in range(nt):
                    g_count[touched[j]] = 0
                if nb == 0:
                    # every idle tool in the same state would build the same (too small) batch
                    _fail_alike(m, s0, s1, fam_has_ded[f], tool_usable, tool_setup, tool_minrun_left,
                                tool_minrun_setup)
                    continue
                s = lot_step[chosen[0]]
                need = st_setup[s]
                if tool_setup[m] != need:
                    for mm in range(s0, s1):
                        if tool_usable[mm] and tool_setup[mm] == need:
                            m = mm
                            break
                if compat == 1:
                    if tool_failed[m] < 5 and tool_minrun_left[m] >= 0 and tool_minrun_setup[m] != need:
                        tool_failed[m] += 1
                        tool_usable[m] = False
                        continue
                tool_failed[m] = 0
                # --- start the job ----------------------------------------------------------
                decisions += 1
                tool_usable[m] = False
                tool_busy[m] = True
                pieces = 0
                for j in range(nb):
                    lot = chosen[j]
                    pieces += lot_pieces[lot]
                    _q_remove(q, q_len, lot_qpos, f, lot)
                    fam_work[f] -= st_pt_mean[lot_step[lot]] / st_bmax[lot_step[lot]]
                    if (lot_cqt[lot] != 0) if compat == 1 else (lot_cqt_to[lot] >= 0):
                        fam_qt_work[f] -= st_pt_mean[lot_step[lot]] / st_bmax[lot_step[lot]]
                    lot_state[lot] = Q_BUSY
                    lot_tool[lot] = m
                    if lot < n_trace and lot_starts[lot] < trace_len:
                        trace_steps[lot, lot_starts[lot]] = s
                    lot_starts[lot] += 1
                    if st_ded_set[s] >= 0:
                        lot_ded[lot, st_ded_set[s]] = m
                    lot_wait[lot] += t - lot_free_since[lot]
                    fam_wait[f] += t - lot_free_since[lot]
                    fam_visits[f] += 1
                    if compat == 1:
                        lot_cqt[lot] = 1
                    else:
                        if lot_cqt_to[lot] == s:
                            if t > lot_cqt_deadline[lot]:
                                cqt_violations += 1
                            lot_cqt[lot] = 0
                            lot_cqt_to[lot] = -1
                            lot_cqt_deadline[lot] = INF
                proc = _sample(st_pt_mean[s], st_pt_half[s])
                lu = fam_load[f] + fam_unload[f]
                lot_time = proc + lu
                r = lot_route[chosen[0]]
                if s + 1 < route_start[r] + route_len[r]:
                    lot_time += _sample(st_tr_mean[s + 1], st_tr_half[s + 1])
                if st_cascade[s] >= 0.0:
                    mach_time = st_cascade[s]
                else:
                    mach_time = proc
                if fam_cascading[f] == 0:
                    mach_time += lu
                su = 0.0
                if need >= 0 and tool_setup[m] != need:
                    if st_setup_time[s] >= 0.0:
                        su = st_setup_time[s]
                    else:
                        su = setup_matrix[tool_setup[m] + 1, need]
                if need >= 0 and setup_min_run[need] > 0 and (compat == 1 or su > 0.0):
                    tool_minrun_left[m] = setup_min_run[need]
                    tool_minrun_setup[m] = need
                tool_setup[m] = need
                busy_min[m] += mach_time
                setup_min[m] += su
                for p in range(tool_pm_start[m], tool_pm_start[m] + tool_pm_count[m]):
                    pm_until[p] -= pieces
                    if pm_until[p] <= 0.0:
                        x = _sample(pm_rep_mean[p], pm_rep_half[p])
                        mach_time += x
                        pm_min[m] += x
                        pm_until[p] = pm_every[p]
                if tool_minrun_left[m] >= 0:
                    tool_minrun_left[m] -= nb
                    if tool_minrun_left[m] <= 0:
                        tool_minrun_left[m] = -1
                        tool_minrun_setup[m] = -1
                tool_epoch[m] += 1
                tool_mdone[m] = t + mach_time + su
                fam_busy_end[f] += tool_mdone[m]
                fam_busy_n[f] += 1
                hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, tool_mdone[m], EV_MDONE, m, tool_epoch[m])
                seq += 1
                tool_job_n[m] = nb
                for j in range(nb):
                    lot = chosen[j]
                    tool_job[m, j] = lot
                    lot_epoch[lot] += 1
                    lot_done_time[lot] = t + lot_time + su
                    hn = _heap_push(ht, hs, hk, ha, hb, hn, seq, lot_done_time[lot], EV_LDONE, lot, lot_epoch[lot])
                    seq += 1
                    if compat == 0 and st_cqt_to[s] >= 0:
                        lot_cqt[lot] = 1
                        lot_cqt_to[lot] = st_cqt_to[s]
                        lot_cqt_from[lot] = s
                        lot_cqt_deadline[lot] = lot_done_time[lot] + st_cqt_min[s]
                if hn + 2 * max_b + 8 >= cap:
                    status = 1
                    break
            if status != 0:
                break
        if status != 0:
            break
    while day < n_days:
        wip_day[day] = n_in - n_out
        out_day[day] = n_out
        day += 1
    return (status, t, decisions, cqt_violations, lot_done_at, lot_wait, lot_steps_done, wip_day, out_day,
            busy_min, setup_min, pm_min, down_min, fam_wait, fam_visits)
