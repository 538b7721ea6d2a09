"""The numba dispatch scorer: for each tool that is idle or about to be, rank the lots it may run.

Kernel API (stable; the fab simulation calls these from its own @njit code)
-------------------------------------------------------------------------
All kernels are `@njit(cache=True)` and pure: arrays in, arrays out.

    fab = model.arrays()                   # FabArrays named tuple (dispatch.model)
    pol = compile_policy(policy, model)    # PolicyArrays named tuple (dispatch.config)
    ws  = new_workspace(fab, pol)          # Workspace named tuple (scratch, reuse it)

    prepare(now_min, fab, pol, ws) -> None
        Per-lot and per-group state for one instant: lots bucketed by the tool
        group of their step (ws.group_ptr / ws.group_lots), each lot's block
        code (ws.lot_block: BLOCK_*), its tool-independent rule features
        (ws.lot_feat[i, RULE]) and key contributions (ws.lot_base), group
        workload (ws.group_wait_min). Queues of groups with many tools up are
        sorted by base key, so a tool whose own terms (setup, minimum run) add
        nothing reads its list off the front. O(lots log lots + tools). Call
        it again after lots or tools change and before scoring.

    score_tool(t, now_min, fab, pol, ws, out_lot, out_key) -> n
        Rank the candidates of tool t: lots waiting at a step of t's group, not
        blocked, whose recipe t is qualified for, and not left to the tools
        already in their setup (setup_left_to_others). Writes the best
        n <= len(out_lot) lot indices, best first, to out_lot (int32[K]) and
        their keys to out_key (float64[K, ws.lot_base.shape[1]]). It does not
        check whether t itself may run now (see tool_available).

    tool_available(t, now_min, fab, pol) -> bool
        Up (E10 productive/standby), not inhibited, busy for at most the
        group's lookahead.

    candidate_features(t, i, now_min, fab, ws, out_feat) -> None
        The rule features (float64[R], RULES order) of lot i on tool t: the
        breakdown an operator sees.

    score_all(now_min, fab, pol, ws, out_n, out_lot, out_key, out_feat) -> n_scored
        The daemon's tick: prepare, then the dispatch list of every available
        tool (out_n[t] = 0 for the others); tools of a group with the same
        setup, minimum-run state and qualifications share one ranking.

    assign(now_min, fab, pol, ws, lot_tool) -> n_lots
        prepare, then hand each available tool (index order within its group)
        its best lot no earlier tool took; on batch steps a batch of the lead
        lot's recipe up to the batch maximum, if it reaches the minimum.
        lot_tool[i] = tool index or -1.

    Per candidate, from scalars (for a simulation with its own lot arrays; the
    kernels above are built from these same functions):

    candidate_key(now_min, level, weight, qt_horizon_min, balance_target_wait_min,
                  deliver_flow_factor, slack_flow_factor, hot, priority, due_min,
                  arrival_min, qt_active, qt_deadline_min, remaining_min, batch_wafers,
                  batch_max_wafers, next_wait_min, minrun_feature, setup_min, feat,
                  out_key) -> None
        level/weight = pol.level[g], pol.weight[g] (the tool group's policy row);
        feat float64[R] scratch (ends holding the features), out_key float64[NL].
    key_better(ka, arrival_a, due_a, id_a, kb, arrival_b, due_b, id_b) -> bool
    block_code(now_min, hold, qt_gate, qt_gate_factor, qt_limit_min,
               qt_target_wait_min, batch_max_wafers, batch_min_wafers, batch_wafers,
               batch_oldest_min, batch_fill, batch_max_wait_min,
               batch_incoming_wafers=1) -> BLOCK_* code
        with the policy row's parameters (pol.qt_gate[g], ...); BLOCK_OK = may start.
    setup_time_min(need, cur, step_setup_time_min, setup_change_min) -> minutes
    minrun_violation(need, cur, runs, setup_min_runs) -> -1.0 | 0.0
    setup_left_to_others(need, cur, hot, holders, waiting, setup_switch_lots) -> bool
        True: a tool in setup `cur` leaves a lot needing setup `need` to the
        `holders` other tools up in that setup (`waiting` lots not on hold need
        it at the group); such a lot is not the tool's candidate.

Note: numba's cache does not notice when a kernel called from another
module changes; after editing this file, clear the callers' __pycache__/*.nb*.

Ordering: keys compared level by level (larger first), then earlier arrival at
the step, earlier due date, lower lot index. A lot's key at level l is
sum(weight[g, r] * feature[r]) over the rules r at level l, summed in RULES
order for the tool-independent rules, then + minrun, then + setup.

Python side: `Dispatcher` (below) owns the workspace and output arrays,
reloads the policy, and turns lists into readable rows (`explain`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
from numba import njit

from dispatch.config import (
    RULES,
    Policy,
    PolicyArrays,
    compile_policy,
    load_policy,
    n_levels,
)
from dispatch.errors import PolicyError
from dispatch.model import NO_DUE_MIN, FabArrays, FabModel, LotState, qual_arrays

__all__ = [
    "BLOCK_NAMES",
    "DispatchLists",
    "Dispatcher",
    "Workspace",
    "add_tool_terms",
    "assign",
    "base_key",
    "block_code",
    "candidate_features",
    "candidate_key",
    "key_better",
    "lot_features",
    "new_workspace",
    "prepare",
    "score_all",
    "score_tool",
    "setup_left_to_others",
    "tool_available",
    "warm",
]

log = logging.getLogger(__name__)

# feature columns (dispatch.config.RULES order)
(R_MINRUN, R_QTIME, R_HOT, R_PRIORITY, R_SETUP, R_CR, R_SLACK, R_BATCH, R_BALANCE, R_FIFO,
 R_DELIVER) = range(11)
N_RULES = len(RULES)
assert RULES[R_SETUP] == "setup" and RULES[R_FIFO] == "fifo" and RULES[R_DELIVER] == "deliver"

# why a lot is not a candidate (ws.lot_block)
BLOCK_OK, BLOCK_NOT_WAITING, BLOCK_HOLD, BLOCK_QT_GATE, BLOCK_BATCH_WAIT = range(5)
BLOCK_NAMES = ("candidate", "not_waiting", "on_hold", "downstream_qt_at_risk", "batch_forming")

_SATURATED_MIN = 1.0e9   # wait of a group with no tool up
_E10_UP_MAX = 1          # E10 codes 0 (productive) and 1 (standby) may run lots
_MAX_CLASS_WALK = 16     # representatives compared before a tool is scored on its own


class Workspace(NamedTuple):
    """Scratch arrays of prepare/score_* (sized for one model; new_workspace makes them)."""

    group_ptr: np.ndarray        # int64[G+1]
    group_lots: np.ndarray       # int32[L]
    group_fill: np.ndarray       # int64[G]
    group_up: np.ndarray         # int32[G], tools up and not inhibited
    group_work_min: np.ndarray   # float64[G]
    group_wait_min: np.ndarray   # float64[G], work per up tool
    group_qt_work_min: np.ndarray  # float64[G], busy time left + work of queue-time-window lots
    group_qt_wait_min: np.ndarray  # float64[G], what a window lot waits: that per up tool
    recipe_wafers: np.ndarray    # int64[NR], waiting wafers at batch steps, per recipe
    recipe_oldest_min: np.ndarray  # float64[NR]
    recipe_incoming: np.ndarray  # int64[NR], wafers one step before a batch step of the recipe
    lot_block: np.ndarray        # int8[L]
    lot_feat: np.ndarray         # float64[L, R]
    lot_base: np.ndarray         # float64[L, NL]
    tool_rep: np.ndarray         # int32[T], representative tool whose list this tool shares
    key_tmp: np.ndarray          # float64[NL]
    group_plain: np.ndarray      # bool[G], queue sorted by base key and no candidate needs a setup
    sort_tmp: np.ndarray         # int32[L]
    setup_tools: np.ndarray      # int32[G, NS], tools up (not inhibited) in each setup
    setup_lots: np.ndarray       # int32[G, NS], lots waiting (not on hold) that need each setup


class DispatchLists(NamedTuple):
    """Every tool's ranked dispatch list: lots, keys and rule breakdown (arrays)."""

    now_min: float
    n: np.ndarray        # int32[T], list length (0: tool not available or nothing to run)
    lot: np.ndarray      # int32[T, K], lot indices best first
    key: np.ndarray      # float64[T, K, NL], keys per level
    feat: np.ndarray     # float64[T, K, R], rule features


def new_workspace(fab: FabArrays, pol: PolicyArrays) -> Workspace:
    """Allocate the scratch arrays for a model's current sizes and a policy's level count."""
    G = pol.level.shape[0]
    L = fab.lot_state.shape[0]
    nr = int(fab.step_recipe.max(initial=-1)) + 1
    nl = n_levels(pol)
    ns = max(fab.setup_min_runs.shape[0], 1)
    return Workspace(
        group_ptr=np.zeros(G + 1, np.int64), group_lots=np.zeros(L, np.int32),
        group_fill=np.zeros(G, np.int64), group_up=np.zeros(G, np.int32),
        group_work_min=np.zeros(G), group_wait_min=np.zeros(G),
        group_qt_work_min=np.zeros(G), group_qt_wait_min=np.zeros(G),
        recipe_wafers=np.zeros(max(nr, 1), np.int64), recipe_oldest_min=np.zeros(max(nr, 1)),
        recipe_incoming=np.zeros(max(nr, 1), np.int64),
        lot_block=np.zeros(L, np.int8), lot_feat=np.zeros((L, N_RULES)),
        lot_base=np.zeros((L, nl)), tool_rep=np.zeros(fab.tool_group.shape[0], np.int32),
        key_tmp=np.zeros(nl), group_plain=np.zeros(G, np.bool_), sort_tmp=np.zeros(L, np.int32),
        setup_tools=np.zeros((G, ns), np.int32), setup_lots=np.zeros((G, ns), np.int32),
    )


# --- kernels ------------------------------------------------------------------------------


# Helpers take arrays and scalars, not the FabArrays tuple: numba passes a named tuple by
# value, and copying 32 array structs per call cost more than the work itself.


@njit(cache=True)
def lot_ptime_min(per, ptime_min, wafers, batch_max):
    """Return the minutes a lot of `wafers` occupies a tool at a step (its share of a batch)."""
    if per == 1:
        return ptime_min * wafers
    if per == 2 and batch_max > 0:
        return ptime_min * wafers / batch_max
    return ptime_min


@njit(cache=True)
def tool_available(t, now_min, fab, pol):
    """Return whether tool t may start a lot within its group's lookahead."""
    if fab.tool_e10[t] > _E10_UP_MAX or fab.tool_inhibited[t]:
        return False
    return fab.tool_busy_until_min[t] <= now_min + pol.lookahead_min[fab.tool_group[t]]


@njit(cache=True)
def setup_time_min(need, cur, step_setup_time_min, setup_change_min):
    """Return the setup minutes a tool in setup `cur` needs for a step needing `need` (0 if none)."""
    if need < 0 or cur == need:
        return 0.0
    if step_setup_time_min > 0.0:
        return step_setup_time_min
    v = setup_change_min[cur + 1, need]
    if v == v:   # not NaN
        return v
    v = setup_change_min[0, need]
    if v == v:
        return v
    return 0.0


@njit(cache=True)
def minrun_violation(need, cur, runs, setup_min_runs):
    """Return -1.0 if a step needing `need` leaves setup `cur` before its minimum run, else 0.0."""
    if cur >= 0 and runs < setup_min_runs[cur] and need != cur:
        return -1.0
    return 0.0


@njit(cache=True)
def setup_left_to_others(need, cur, hot, holders, waiting, setup_switch_lots):
    """Return whether a tool in setup `cur` leaves a lot needing setup `need` to other tools.

    `holders` tools up are already in setup `need` (not this one) and `waiting`
    lots need it at the tool group. A greedy tool that ran out of lots for its
    own setup would change to the setup of the most urgent lot even when those
    tools will run it without a change; it may change only when more than
    setup_switch_lots lots per holder wait (0: always). Hot lots always may.
    """
    return (setup_switch_lots > 0.0 and cur >= 0 and need >= 0 and need != cur and hot == 0
            and holders > 0 and waiting <= setup_switch_lots * holders)


@njit(cache=True)
def qualified(qual_recipe, lo, hi, recipe):
    """Return whether `recipe` is in the sorted CSR row qual_recipe[lo:hi]."""
    while lo < hi:
        mid = (lo + hi) // 2
        v = qual_recipe[mid]
        if v < recipe:
            lo = mid + 1
        elif v > recipe:
            hi = mid
        else:
            return True
    return False


@njit(cache=True)
def prepare(now_min, fab, pol, ws):
    """Compute per-group workload and queues and per-lot blocks, features and base keys."""
    G = ws.group_ptr.shape[0] - 1
    n_slots = fab.lot_state.shape[0]
    ws.group_up[:] = 0
    ws.group_work_min[:] = 0.0
    ws.group_qt_work_min[:] = 0.0
    ws.group_fill[:] = 0
    ws.group_plain[:] = True
    ws.recipe_wafers[:] = 0
    ws.recipe_oldest_min[:] = np.inf
    ws.recipe_incoming[:] = 0
    ws.setup_tools[:] = 0
    ws.setup_lots[:] = 0
    for t in range(fab.tool_group.shape[0]):
        if fab.tool_e10[t] <= _E10_UP_MAX and not fab.tool_inhibited[t]:
            g = fab.tool_group[t]
            ws.group_up[g] += 1
            if fab.tool_setup[t] >= 0:
                ws.setup_tools[g, fab.tool_setup[t]] += 1
            rem = fab.tool_busy_until_min[t] - now_min
            if rem > 0.0:
                ws.group_work_min[g] += rem
                ws.group_qt_work_min[g] += rem
    for i in range(n_slots):
        st = fab.lot_state[i]
        if st > 1:
            continue
        s = fab.lot_step[i]
        if not fab.lot_hold[i]:   # lots one step before a batch step are the batch's supply
            sn = fab.step_next[s]
            if sn >= 0 and fab.step_batch_max[sn] > 0:
                ws.recipe_incoming[fab.step_recipe[sn]] += fab.lot_wafers[i]
        if st != 0:
            continue
        g = fab.step_group[s]
        ws.group_fill[g] += 1
        if fab.lot_hold[i]:
            continue
        if fab.step_setup[s] >= 0:
            ws.setup_lots[g, fab.step_setup[s]] += 1
        pt = lot_ptime_min(fab.step_ptime_per[s], fab.step_ptime_min[s], fab.lot_wafers[i],
                           fab.step_batch_max[s])
        ws.group_work_min[g] += pt
        if fab.lot_qt_step[i] >= 0:   # window lots go first (qtime rule): only they are ahead
            ws.group_qt_work_min[g] += pt
        if fab.step_batch_max[s] > 0:
            r = fab.step_recipe[s]
            ws.recipe_wafers[r] += fab.lot_wafers[i]
            if fab.lot_arrival_min[i] < ws.recipe_oldest_min[r]:
                ws.recipe_oldest_min[r] = fab.lot_arrival_min[i]
    ws.group_ptr[0] = 0
    for g in range(G):
        ws.group_ptr[g + 1] = ws.group_ptr[g] + ws.group_fill[g]
        ws.group_fill[g] = ws.group_ptr[g]
        if ws.group_up[g] > 0:
            ws.group_wait_min[g] = ws.group_work_min[g] / ws.group_up[g]
            ws.group_qt_wait_min[g] = ws.group_qt_work_min[g] / ws.group_up[g]
        else:
            ws.group_wait_min[g] = _SATURATED_MIN
            ws.group_qt_wait_min[g] = _SATURATED_MIN
    for i in range(n_slots):
        if fab.lot_state[i] != 0:
            ws.lot_block[i] = BLOCK_NOT_WAITING
            continue
        s = fab.lot_step[i]
        g = fab.step_group[s]
        ws.group_lots[ws.group_fill[g]] = i
        ws.group_fill[g] += 1
        bmax = fab.step_batch_max[s]
        r = fab.step_recipe[s]
        sn = fab.step_next[s]
        tq = fab.step_qt_to[s]
        f = ws.lot_feat[i]
        lot_features(now_min, pol.qt_horizon_min[g], pol.balance_target_wait_min[g],
                     pol.deliver_flow_factor[g], pol.slack_flow_factor[g], fab.lot_hot[i],
                     fab.lot_priority[i], fab.lot_due_min[i],
                     fab.lot_arrival_min[i], fab.lot_qt_step[i] >= 0,
                     fab.lot_qt_deadline_min[i], fab.step_rpt_min[s],
                     ws.recipe_wafers[r] if bmax > 0 else 0, bmax,
                     ws.group_wait_min[fab.step_group[sn]] if sn >= 0 else -1.0, f)
        base_key(pol.level[g], pol.weight[g], f, ws.lot_base[i])
        ws.lot_block[i] = block_code(
            now_min, fab.lot_hold[i], pol.qt_gate[g], pol.qt_gate_factor[g],
            fab.step_qt_limit_min[s], ws.group_qt_wait_min[fab.step_group[tq]] if tq >= 0 else -1.0,
            bmax, fab.step_batch_min[s], ws.recipe_wafers[r] if bmax > 0 else 0,
            ws.recipe_oldest_min[r] if bmax > 0 else now_min, pol.batch_fill[g],
            pol.batch_max_wait_min[g], ws.recipe_incoming[r] if bmax > 0 else 0)
        if ws.lot_block[i] == BLOCK_OK and fab.step_setup[s] >= 0:
            ws.group_plain[g] = False
    # Queues in base-key order let a tool whose own terms add nothing take its list from the
    # front (score_tool's fast path). Sorting costs q log q comparisons; scanning costs q per
    # tool, so sort where the group has more tools up than about 2 log2(q).
    for g in range(G):
        q = ws.group_ptr[g + 1] - ws.group_ptr[g]
        if q >= 2 and ws.group_up[g] > 2.0 * np.log2(q):
            _sort_lots(ws.group_lots, ws.group_ptr[g], ws.group_ptr[g + 1], ws.lot_base,
                       fab.lot_arrival_min, fab.lot_due_min, ws.sort_tmp)
        else:
            ws.group_plain[g] = False


@njit(cache=True)
def _lot_better(keys, a, b, arrival, due):
    """key_better for two lots whose keys are rows of one array (no row views)."""
    for lv in range(keys.shape[1]):
        ka = keys[a, lv]
        kb = keys[b, lv]
        if ka != kb:
            return ka > kb
    if arrival[a] != arrival[b]:
        return arrival[a] < arrival[b]
    if due[a] != due[b]:
        return due[a] < due[b]
    return a < b


@njit(cache=True)
def _sort_lots(lots, lo, hi, keys, arrival, due, tmp):
    """Sort lots[lo:hi] best first by (keys[lot], arrival, due, lot) with a bottom-up merge sort."""
    n = hi - lo
    if n < 2:
        return
    in_tmp = False   # where the sorted runs are now
    width = 1
    while width < n:
        src = tmp if in_tmp else lots
        dst = lots if in_tmp else tmp
        for a0 in range(lo, hi, 2 * width):
            mid = min(a0 + width, hi)
            b1 = min(a0 + 2 * width, hi)
            a, b, k = a0, mid, a0
            while a < mid and b < b1:
                ia, ib = src[a], src[b]
                if _lot_better(keys, ib, ia, arrival, due):
                    dst[k] = ib
                    b += 1
                else:
                    dst[k] = ia
                    a += 1
                k += 1
            while a < mid:
                dst[k] = src[a]
                a += 1
                k += 1
            while b < b1:
                dst[k] = src[b]
                b += 1
                k += 1
        in_tmp = not in_tmp
        width *= 2
    if in_tmp:
        lots[lo:hi] = tmp[lo:hi]


# --- per-candidate kernels: the policy itself, from scalars (the simulation calls these) ---


@njit(cache=True)
def lot_features(now_min, qt_horizon_min, balance_target_wait_min, deliver_flow_factor,
                 slack_flow_factor, hot, priority, due_min, arrival_min, qt_active,
                 qt_deadline_min, remaining_min, batch_wafers, batch_max_wafers, next_wait_min,
                 out_feat):
    """Write a lot's tool-independent rule features (RULES order) to out_feat[R].

    batch_wafers: wafers of the lot's recipe waiting (batch steps, else 0);
    next_wait_min: work per up tool queued at the next step's group, < 0 at
    the end of the route. MINRUN and SETUP columns are set to 0 (tool terms).
    """
    if qt_active:
        if qt_horizon_min <= 0.0:
            out_feat[R_QTIME] = 1.0
        else:
            slack = qt_deadline_min - now_min
            if slack < 0.0:
                slack = 0.0
            out_feat[R_QTIME] = qt_horizon_min / (qt_horizon_min + slack)
    else:
        out_feat[R_QTIME] = 0.0
    out_feat[R_HOT] = float(hot)
    out_feat[R_PRIORITY] = float(priority)
    rpt = remaining_min
    if rpt < 1.0:
        rpt = 1.0
    to_due = due_min - now_min
    ratio = to_due / rpt
    out_feat[R_CR] = -ratio
    if due_min >= NO_DUE_MIN:
        out_feat[R_SLACK] = 0.0    # no due date: on its pace (FIFO among such lots)
    else:
        out_feat[R_SLACK] = -((to_due - slack_flow_factor * rpt) / 1440.0)
    out_feat[R_DELIVER] = 0.0 if ratio >= deliver_flow_factor else -1.0
    if batch_max_wafers > 0:
        out_feat[R_BATCH] = min(batch_wafers, batch_max_wafers) / batch_max_wafers
    else:
        out_feat[R_BATCH] = 0.0
    if next_wait_min >= 0.0:
        v = (balance_target_wait_min - next_wait_min) / balance_target_wait_min
        out_feat[R_BALANCE] = min(1.0, max(-1.0, v))
    else:
        out_feat[R_BALANCE] = 0.0
    out_feat[R_FIFO] = (now_min - arrival_min) / 60.0
    out_feat[R_MINRUN] = 0.0
    out_feat[R_SETUP] = 0.0


@njit(cache=True)
def base_key(level, weight, feat, out_base):
    """Sum weight x feature of the tool-independent rules into their levels (RULES order)."""
    for lv in range(out_base.shape[0]):
        out_base[lv] = 0.0
    for r in range(N_RULES):
        if r == R_MINRUN or r == R_SETUP:
            continue
        lv = level[r]
        if lv >= 0:
            out_base[lv] += weight[r] * feat[r]


@njit(cache=True)
def add_tool_terms(level, weight, minrun_feature, setup_min, key):
    """Add the tool-dependent terms (minimum-run violation, then setup hours) to a base key."""
    lv = level[R_MINRUN]
    if lv >= 0:
        key[lv] += weight[R_MINRUN] * minrun_feature
    lv = level[R_SETUP]
    if lv >= 0:
        key[lv] += weight[R_SETUP] * (-(setup_min / 60.0))


@njit(cache=True)
def block_code(now_min, hold, qt_gate, qt_gate_factor, qt_limit_min, qt_target_wait_min,
               batch_max_wafers, batch_min_wafers, batch_wafers, batch_oldest_min, batch_fill,
               batch_max_wait_min, batch_incoming_wafers=1):
    """Return why a waiting lot may not start anywhere now (BLOCK_*), BLOCK_OK if it may.

    qt_target_wait_min: what a lot in a queue-time window waits at the group
    of the step that closes this step's window: (busy time left on its tools
    + process time of the window lots queued there) / tools up; < 0 if the
    step opens no window. A batch below
    batch_fill x max waits for a fuller one only while more wafers of its
    recipe are one step upstream (batch_incoming_wafers; the default 1 means
    "some", for callers that do not count them) and its oldest lot has waited
    less than batch_max_wait_min; otherwise it goes now.
    """
    if hold:
        return BLOCK_HOLD
    if qt_gate and qt_target_wait_min >= 0.0 and qt_target_wait_min > qt_gate_factor * qt_limit_min:
        return BLOCK_QT_GATE
    if batch_max_wafers > 0:
        if batch_wafers < batch_min_wafers:
            return BLOCK_BATCH_WAIT
        if (batch_wafers < batch_fill * batch_max_wafers and batch_incoming_wafers > 0
                and now_min - batch_oldest_min < batch_max_wait_min):
            return BLOCK_BATCH_WAIT
    return BLOCK_OK


@njit(cache=True)
def candidate_key(now_min, level, weight, qt_horizon_min, balance_target_wait_min,
                  deliver_flow_factor, slack_flow_factor, hot, priority, due_min, arrival_min,
                  qt_active, qt_deadline_min, remaining_min, batch_wafers, batch_max_wafers,
                  next_wait_min, minrun_feature, setup_min, feat, out_key):
    """Compute one (tool, lot) key from scalars: what score_tool computes for each candidate.

    level/weight: the tool group's policy row (pol.level[g], pol.weight[g]);
    minrun_feature: -1.0 on a minimum-run violation else 0.0; setup_min: setup
    minutes the tool needs. feat (float64[R]) is scratch and ends with the
    features; out_key (float64[NL]) gets the key. Rank with key_better.
    """
    lot_features(now_min, qt_horizon_min, balance_target_wait_min, deliver_flow_factor,
                 slack_flow_factor, hot, priority, due_min, arrival_min, qt_active,
                 qt_deadline_min, remaining_min, batch_wafers, batch_max_wafers, next_wait_min, feat)
    base_key(level, weight, feat, out_key)
    add_tool_terms(level, weight, minrun_feature, setup_min, out_key)
    feat[R_MINRUN] = minrun_feature
    feat[R_SETUP] = -(setup_min / 60.0)


@njit(cache=True)
def key_better(ka, arrival_a, due_a, id_a, kb, arrival_b, due_b, id_b):
    """Return whether candidate a ranks before b: keys larger level by level, then FIFO, due, id."""
    for lv in range(ka.shape[0]):
        if ka[lv] != kb[lv]:
            return ka[lv] > kb[lv]
    if arrival_a != arrival_b:
        return arrival_a < arrival_b
    if due_a != due_b:
        return due_a < due_b
    return id_a < id_b


@njit(cache=True)
def score_tool(t, now_min, fab, pol, ws, out_lot, out_key):
    """Rank tool t's candidates into out_lot/out_key (best first); return how many."""
    g = fab.tool_group[t]
    K = out_lot.shape[0]
    NL = ws.lot_base.shape[1]
    level, weight = pol.level[g], pol.weight[g]
    cur = fab.tool_setup[t]
    runs = fab.tool_setup_runs[t]
    q_lo, q_hi = fab.qual_ptr[t], fab.qual_ptr[t + 1]
    qual_recipe, step_recipe, lot_step = fab.qual_recipe, fab.step_recipe, fab.lot_step
    step_setup, step_setup_time, setup_change = (fab.step_setup, fab.step_setup_time_min,
                                                 fab.setup_change_min)
    setup_min_runs = fab.setup_min_runs
    arrival, due = fab.lot_arrival_min, fab.lot_due_min
    group_lots, lot_block, lot_base = ws.group_lots, ws.lot_block, ws.lot_base
    key = ws.key_tmp
    n = 0
    minrun_active = cur >= 0 and runs < setup_min_runs[cur] and level[R_MINRUN] >= 0
    if ws.group_plain[g] and not minrun_active:
        # no setup or minimum-run term for any candidate: keys are the base keys, and the
        # queue is already in that order (prepare sorted it)
        for j in range(ws.group_ptr[g], ws.group_ptr[g + 1]):
            i = group_lots[j]
            if lot_block[i] != BLOCK_OK:
                continue
            if not qualified(qual_recipe, q_lo, q_hi, step_recipe[lot_step[i]]):
                continue
            out_lot[n] = i
            for lv in range(NL):
                out_key[n, lv] = lot_base[i, lv]
            n += 1
            if n == K:
                break
        return n
    switch_lots = pol.setup_switch_lots[g]
    for j in range(ws.group_ptr[g], ws.group_ptr[g + 1]):
        i = group_lots[j]
        if lot_block[i] != BLOCK_OK:
            continue
        s = lot_step[i]
        if not qualified(qual_recipe, q_lo, q_hi, step_recipe[s]):
            continue
        need = step_setup[s]
        if need >= 0 and setup_left_to_others(need, cur, fab.lot_hot[i], ws.setup_tools[g, need],
                                              ws.setup_lots[g, need], switch_lots):
            continue
        for lv in range(NL):
            key[lv] = lot_base[i, lv]
        add_tool_terms(level, weight,
                       minrun_violation(step_setup[s], cur, runs, setup_min_runs),
                       setup_time_min(step_setup[s], cur, step_setup_time[s], setup_change), key)
        # insert into the sorted top-K
        if n == K:
            b = out_lot[K - 1]
            if not key_better(key, arrival[i], due[i], i, out_key[K - 1], arrival[b], due[b], b):
                continue
            pos = K - 1
        else:
            pos = n
            n += 1
        while pos > 0:
            b = out_lot[pos - 1]
            if not key_better(key, arrival[i], due[i], i, out_key[pos - 1], arrival[b], due[b], b):
                break
            out_lot[pos] = out_lot[pos - 1]
            for lv in range(NL):
                out_key[pos, lv] = out_key[pos - 1, lv]
            pos -= 1
        out_lot[pos] = i
        for lv in range(NL):
            out_key[pos, lv] = key[lv]
    return n


@njit(cache=True)
def candidate_features(t, i, now_min, fab, ws, out_feat):
    """Write the rule features of lot i on tool t (RULES order) to out_feat."""
    s = fab.lot_step[i]
    for r in range(N_RULES):
        out_feat[r] = ws.lot_feat[i, r]
    need, cur = fab.step_setup[s], fab.tool_setup[t]
    out_feat[R_MINRUN] = minrun_violation(need, cur, fab.tool_setup_runs[t], fab.setup_min_runs)
    out_feat[R_SETUP] = -(setup_time_min(need, cur, fab.step_setup_time_min[s],
                                         fab.setup_change_min) / 60.0)


@njit(cache=True)
def _same_class(tool_setup, tool_setup_runs, setup_min_runs, qual_ptr, qual_recipe, qual_hash,
                a, b):
    """Return whether tools a and b rank every lot the same (setup, min-run state, quals)."""
    if tool_setup[a] != tool_setup[b] or qual_hash[a] != qual_hash[b]:
        return False
    sa = tool_setup[a]
    if sa >= 0:
        if (tool_setup_runs[a] < setup_min_runs[sa]) != (tool_setup_runs[b] < setup_min_runs[sa]):
            return False
    pa, pb = qual_ptr[a], qual_ptr[b]
    na, nb = qual_ptr[a + 1] - pa, qual_ptr[b + 1] - pb
    if na != nb:
        return False
    for k in range(na):
        if qual_recipe[pa + k] != qual_recipe[pb + k]:
            return False
    return True


@njit(cache=True)
def score_all(now_min, fab, pol, ws, out_n, out_lot, out_key, out_feat):
    """Prepare and rank every available tool; return how many distinct rankings were computed."""
    prepare(now_min, fab, pol, ws)
    T = fab.tool_group.shape[0]
    G = ws.group_ptr.shape[0] - 1
    NL = ws.lot_base.shape[1]
    # per group: a chain of representative tools (head[g] -> ws.tool_rep links)
    head = np.full(G, -1, np.int32)
    link = ws.tool_rep
    tool_setup, setup_runs, min_runs = fab.tool_setup, fab.tool_setup_runs, fab.setup_min_runs
    qual_ptr, qual_recipe, qual_hash = fab.qual_ptr, fab.qual_recipe, fab.tool_qual_hash
    scored = 0
    for t in range(T):
        link[t] = -1
        if not tool_available(t, now_min, fab, pol):
            out_n[t] = 0
            continue
        g = fab.tool_group[t]
        rep = head[g]
        walked = 0
        while rep >= 0 and not _same_class(tool_setup, setup_runs, min_runs, qual_ptr, qual_recipe,
                                           qual_hash, rep, t):
            rep = link[rep]
            walked += 1
            if walked == _MAX_CLASS_WALK:   # a group of all-different tools: score on its own
                rep = -1
        if rep >= 0:
            n = out_n[rep]
            out_n[t] = n
            for k in range(n):
                out_lot[t, k] = out_lot[rep, k]
                for lv in range(NL):
                    out_key[t, k, lv] = out_key[rep, k, lv]
                for r in range(N_RULES):
                    out_feat[t, k, r] = out_feat[rep, k, r]
            continue
        n = score_tool(t, now_min, fab, pol, ws, out_lot[t], out_key[t])
        out_n[t] = n
        cur, runs = tool_setup[t], setup_runs[t]
        for k in range(n):   # the breakdown an operator sees (inline: no tuple copies per lot)
            i = out_lot[t, k]
            s = fab.lot_step[i]
            for r in range(N_RULES):
                out_feat[t, k, r] = ws.lot_feat[i, r]
            need = fab.step_setup[s]
            out_feat[t, k, R_MINRUN] = minrun_violation(need, cur, runs, min_runs)
            out_feat[t, k, R_SETUP] = -(setup_time_min(need, cur, fab.step_setup_time_min[s],
                                                       fab.setup_change_min) / 60.0)
        link[t] = head[g]
        head[g] = t
        scored += 1
    return scored


@njit(cache=True)
def _rank_full(t, fab, pol, ws, out_lot, out_key):
    """Rank every candidate of tool t (merge sort, best first) into out_lot/out_key; return n."""
    g = fab.tool_group[t]
    NL = ws.lot_base.shape[1]
    level, weight = pol.level[g], pol.weight[g]
    cur, runs = fab.tool_setup[t], fab.tool_setup_runs[t]
    q_lo, q_hi = fab.qual_ptr[t], fab.qual_ptr[t + 1]
    n = 0
    for j in range(ws.group_ptr[g], ws.group_ptr[g + 1]):
        i = ws.group_lots[j]
        if ws.lot_block[i] != BLOCK_OK:
            continue
        s = fab.lot_step[i]
        if not qualified(fab.qual_recipe, q_lo, q_hi, fab.step_recipe[s]):
            continue
        need = fab.step_setup[s]
        if need >= 0 and setup_left_to_others(need, cur, fab.lot_hot[i], ws.setup_tools[g, need],
                                              ws.setup_lots[g, need], pol.setup_switch_lots[g]):
            continue
        out_lot[n] = i
        for lv in range(NL):
            out_key[n, lv] = ws.lot_base[i, lv]
        add_tool_terms(level, weight, minrun_violation(need, cur, runs, fab.setup_min_runs),
                       setup_time_min(need, cur, fab.step_setup_time_min[s], fab.setup_change_min),
                       out_key[n])
        n += 1
    arrival, due = fab.lot_arrival_min, fab.lot_due_min
    src = np.arange(n)
    dst = np.empty(n, np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a, b, k = lo, mid, lo
            while a < mid and b < hi:
                ia, ib = out_lot[src[a]], out_lot[src[b]]
                if key_better(out_key[src[b]], arrival[ib], due[ib], ib,
                              out_key[src[a]], arrival[ia], due[ia], ia):
                    dst[k] = src[b]
                    b += 1
                else:
                    dst[k] = src[a]
                    a += 1
                k += 1
            while a < mid:
                dst[k] = src[a]
                a += 1
                k += 1
            while b < hi:
                dst[k] = src[b]
                b += 1
                k += 1
        src, dst = dst, src
        width *= 2
    lots = out_lot[:n].copy()
    keys = out_key[:n].copy()
    for k in range(n):
        out_lot[k] = lots[src[k]]
        for lv in range(NL):
            out_key[k, lv] = keys[src[k], lv]
    return n


@njit(cache=True)
def _pick(t, ranked, start, n, lot_tool, lot_step, step_recipe, step_batch_max, step_batch_min,
          lot_wafers):
    """Give tool t its best free lot of ranked[start:n] (a batch on batch steps); return how many."""
    failed_recipe = -1
    for p in range(start, n):
        lead = ranked[p]
        if lot_tool[lead] >= 0:
            continue
        s = lot_step[lead]
        bmax = step_batch_max[s]
        if bmax <= 0:
            lot_tool[lead] = t
            return 1
        rec = step_recipe[s]
        if rec == failed_recipe:
            continue
        wafers = 0
        taken = 0
        for p2 in range(p, n):
            i = ranked[p2]
            if lot_tool[i] >= 0 or step_recipe[lot_step[i]] != rec:
                continue
            if wafers + lot_wafers[i] > bmax:
                continue
            lot_tool[i] = t
            wafers += lot_wafers[i]
            taken += 1
        if wafers >= step_batch_min[s]:
            return taken
        for p2 in range(p, n):   # too small a batch for this tool: give them back
            if lot_tool[ranked[p2]] == t:
                lot_tool[ranked[p2]] = -1
        failed_recipe = rec
    return 0


@njit(cache=True)
def assign(now_min, fab, pol, ws, lot_tool):
    """Hand each available tool its best lot (a batch on batch steps) not given to another tool.

    Tools take their turn in index order within their group; each takes the
    first lot of its own ranking that is still free. On a batch step it takes
    the free lots of the lead lot's recipe in rank order up to the batch
    maximum, and only if they reach the batch minimum. Writes the tool index
    of every assigned lot to lot_tool (int32[L], -1 = not assigned); returns
    the number of lots assigned.
    """
    prepare(now_min, fab, pol, ws)
    T = fab.tool_group.shape[0]
    G = ws.group_ptr.shape[0] - 1
    NL = ws.lot_base.shape[1]
    lot_tool[:] = -1
    tptr = np.zeros(G + 1, np.int64)
    for t in range(T):
        if tool_available(t, now_min, fab, pol):
            tptr[fab.tool_group[t] + 1] += 1
    for g in range(G):
        tptr[g + 1] += tptr[g]
    fill = tptr[:G].copy()
    tools = np.empty(tptr[G], np.int32)
    for t in range(T):
        if tool_available(t, now_min, fab, pol):
            g = fab.tool_group[t]
            tools[fill[g]] = t
            fill[g] += 1
    n_assigned = 0
    for g in range(G):
        nt = tptr[g + 1] - tptr[g]
        q = ws.group_ptr[g + 1] - ws.group_ptr[g]
        if nt == 0 or q == 0:
            continue
        has_batch = False
        for j in range(ws.group_ptr[g], ws.group_ptr[g + 1]):
            i = ws.group_lots[j]
            if ws.lot_block[i] == BLOCK_OK and fab.step_batch_max[fab.lot_step[i]] > 0:
                has_batch = True
                break
        # up to _MAX_CLASS_WALK full rankings shared by identical tools; other tools alone
        n_rep_max = min(nt, _MAX_CLASS_WALK)
        reps = np.empty(n_rep_max, np.int32)
        rl = np.empty((n_rep_max, q), np.int32)
        rk = np.empty((n_rep_max, q, NL))
        rn = np.zeros(n_rep_max, np.int64)
        head = np.zeros(n_rep_max, np.int64)
        own_lot = np.empty(q, np.int32)
        own_key = np.empty((q, NL))
        n_cls = 0
        taken_g = 0
        for k in range(nt):
            t = tools[tptr[g] + k]
            c = -1
            for r in range(n_cls):
                if _same_class(fab.tool_setup, fab.tool_setup_runs, fab.setup_min_runs,
                               fab.qual_ptr, fab.qual_recipe, fab.tool_qual_hash, reps[r], t):
                    c = r
                    break
            if c < 0 and n_cls < n_rep_max:
                c = n_cls
                reps[c] = t
                rn[c] = _rank_full(t, fab, pol, ws, rl[c], rk[c])
                n_cls += 1
            if c >= 0:
                while head[c] < rn[c] and lot_tool[rl[c, head[c]]] >= 0:
                    head[c] += 1
                got = _pick(t, rl[c], head[c], rn[c], lot_tool, fab.lot_step, fab.step_recipe,
                            fab.step_batch_max, fab.step_batch_min, fab.lot_wafers)
            else:
                if has_batch:
                    n = _rank_full(t, fab, pol, ws, own_lot, own_key)
                else:
                    # at most taken_g lots of this group are gone: its best free one is in the top taken_g + 1
                    kk = min(q, taken_g + 1)
                    n = score_tool(t, now_min, fab, pol, ws, own_lot[:kk], own_key[:kk])
                got = _pick(t, own_lot, 0, n, lot_tool, fab.lot_step, fab.step_recipe,
                            fab.step_batch_max, fab.step_batch_min, fab.lot_wafers)
            taken_g += got
            n_assigned += got
    return n_assigned


# --- Python side --------------------------------------------------------------------------


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One row of a tool's dispatch list, readable: why this lot ranks where it does."""

    rank: int
    lot_id: str
    step: str                        # "route:position"
    recipe: str
    keys: list[float]                # per lexicographic level, level 0 first
    features: dict[str, float]       # rule -> feature value
    contributions: dict[str, float]  # rule -> weight x feature (0 for rules off)
    levels: dict[str, int]           # rule -> level (-1 off)


class Dispatcher:
    """The daemon's dispatcher: owns the compiled policy, scratch and the latest dispatch lists."""

    def __init__(self, model: FabModel, policy: Policy | None = None) -> None:
        self.model = model
        self.policy = policy if policy is not None else Policy()
        self._pol: PolicyArrays | None = None
        self._ws: Workspace | None = None
        self._out: DispatchLists | None = None
        self._shape: tuple = ()
        self._lot_tool: np.ndarray | None = None

    def reload(self, source: str | Path | dict[str, Any] | Policy) -> list[tuple[str, str]]:
        """Load a new policy; on any problem keep the current one and return the problems."""
        try:
            policy = load_policy(source)
            pol = compile_policy(policy, self.model)
        except PolicyError as exc:
            log.warning("dispatch policy not reloaded, keeping %r: %s", self.policy.preset, exc)
            return exc.problems
        self.policy, self._pol, self._ws = policy, pol, None
        log.info("dispatch policy reloaded: preset %s, %d group overrides",
                 policy.preset, len(policy.groups))
        return []

    def _ensure(self) -> tuple[FabArrays, PolicyArrays, Workspace]:
        fab = self.model.arrays()
        if self._pol is None or self._pol.level.shape[0] != self.model.n_groups:
            # groups may arrive with master data after the policy: not an error here
            self._pol = compile_policy(self.policy, self.model, strict=False)
            self._ws = None
        shape = (fab.lot_state.shape[0], fab.tool_group.shape[0], fab.step_recipe.shape[0],
                 fab.setup_min_runs.shape[0])
        if self._ws is None or shape != self._shape:
            self._ws = new_workspace(fab, self._pol)
            T, K, NL = shape[1], self.policy.max_list, self._ws.lot_base.shape[1]
            self._out = DispatchLists(0.0, np.zeros(T, np.int32), np.zeros((T, K), np.int32),
                                      np.zeros((T, K, NL)), np.zeros((T, K, N_RULES)))
            self._shape = shape
        return fab, self._pol, self._ws

    def score(self, now_min: float) -> DispatchLists:
        """Re-score every available tool and return the dispatch lists (arrays reused per call)."""
        fab, pol, ws = self._ensure()
        out = self._out
        score_all(now_min, fab, pol, ws, out.n, out.lot, out.key, out.feat)
        self._out = out._replace(now_min=now_min)
        return self._out

    def assign(self, now_min: float, *, unavailable: Iterable[str] = (),
               taken: Iterable[str] = (), blocked: Iterable[tuple[str, str]] = ()
               ) -> dict[str, list[str]]:
        """Return tool id -> lot ids to start now (a batch on batch tools), no lot given twice.

        `unavailable` tools get nothing (the caller will not start a lot on them now: busy,
        a start in flight, backing off), so the lots they would have taken go to the other
        tools of their group; `taken` lots (already on their way to a tool) go to no tool;
        a (tool id, recipe id) pair in `blocked` is left out as if the tool were not
        qualified for the recipe (it just refused it), so the tool gets its next lot.
        """
        fab, pol, ws = self._ensure()
        fab = self._without(fab, pol, now_min, unavailable, taken, blocked)
        if self._lot_tool is None or self._lot_tool.shape[0] != fab.lot_state.shape[0]:
            self._lot_tool = np.full(fab.lot_state.shape[0], -1, np.int32)
        assign(now_min, fab, pol, ws, self._lot_tool)
        idx = np.flatnonzero(self._lot_tool >= 0)
        tools = self._lot_tool[idx]
        order = np.argsort(tools, kind="stable")
        lot_ids, tool_ids = self.model.lot_ids, self.model.tool_ids
        out: dict[str, list[str]] = {}
        for i, t in zip(idx[order].tolist(), tools[order].tolist(), strict=True):
            out.setdefault(tool_ids[t], []).append(lot_ids[i])
        return out

    def _without(self, fab: FabArrays, pol: PolicyArrays, now_min: float,
                 unavailable: Iterable[str], taken: Iterable[str],
                 blocked: Iterable[tuple[str, str]] = ()) -> FabArrays:
        """The kernel's view with `unavailable` tools, `taken` lots and `blocked` (tool,
        recipe) pairs out of the assignment (copies of the arrays concerned; the model itself
        is not changed)."""
        model = self.model
        drop: dict[int, set[int]] = {}
        for tool, recipe in blocked:
            t, r = model.tool_index.get(tool), model.recipe_index.get(recipe)
            if t is not None and r is not None:
                drop.setdefault(t, set()).add(r)
        if drop:
            quals = [[r for r in q if r not in drop[t]] if t in drop else q
                     for t, q in enumerate(model._tool_quals)]
            ptr, recipes, qhash = qual_arrays(quals)
            fab = fab._replace(qual_ptr=ptr, qual_recipe=recipes, tool_qual_hash=qhash)
        ts = [model.tool_index[t] for t in unavailable if t in model.tool_index]
        if ts:
            # busy past their group's lookahead: tool_available() says no, while prepare()
            # still counts them as tools that are up (group workloads do not jump)
            t = np.asarray(ts, np.int64)
            busy = fab.tool_busy_until_min.copy()
            busy[t] = np.maximum(busy[t], now_min + pol.lookahead_min[fab.tool_group[t]] + 1e-3)
            fab = fab._replace(tool_busy_until_min=busy)
        ls = [model.lot_index[x] for x in taken if x in model.lot_index]
        if ls:
            i = np.asarray(ls, np.int64)
            state = fab.lot_state.copy()
            state[i[state[i] == LotState.WAITING]] = LotState.RUNNING
            fab = fab._replace(lot_state=state)
        return fab

    def explain_json(self, tool_id: str) -> bytes:
        """Return a tool's latest dispatch list as JSON (for the HTTP endpoint or a log line)."""
        return msgspec.json.encode({"tool_id": tool_id, "now_min": self._out.now_min if self._out
                                    else None, "candidates": self.explain(tool_id)})

    def top(self, tool_id: str) -> str | None:
        """Return the lot id at the head of a tool's latest dispatch list, if any."""
        t = self.model.tool(tool_id)
        out = self._out
        if out is None or out.n[t] == 0:
            return None
        return self.model.lot_ids[int(out.lot[t, 0])]

    def explain(self, tool_id: str, lists: DispatchLists | None = None) -> list[Candidate]:
        """Return a tool's dispatch list as readable rows (rule features and weighted parts)."""
        out = lists if lists is not None else self._out
        t = self.model.tool(tool_id)
        if out is None:
            return []
        g = int(self.model.tool_group[t])
        lev, wt = self._pol.level[g], self._pol.weight[g]
        rows = []
        for k in range(int(out.n[t])):
            i = int(out.lot[t, k])
            s = int(self.model.lot_step[i])
            feats = {r: float(out.feat[t, k, j]) + 0.0 for j, r in enumerate(RULES)}  # no -0.0
            rows.append(Candidate(
                rank=k + 1, lot_id=self.model.lot_ids[i], step=self.model.step_name(s),
                recipe=self.model.recipe_ids[int(self.model.step_recipe[s])],
                keys=[float(x) + 0.0 for x in out.key[t, k]], features=feats,
                contributions={r: float(wt[j] * feats[r]) + 0.0 if lev[j] >= 0 else 0.0
                               for j, r in enumerate(RULES)},
                levels={r: int(lev[j]) for j, r in enumerate(RULES)},
            ))
        return rows

    def blocked(self) -> dict[str, str]:
        """Return waiting lots that are not candidates anywhere, with the reason (after score)."""
        ws = self._ws
        if ws is None:
            return {}
        out = {}
        for i, name in enumerate(self.model.lot_ids):
            if name and int(self.model.lot_state[i]) == LotState.WAITING:
                b = int(ws.lot_block[i])
                if b != BLOCK_OK:
                    out[name] = BLOCK_NAMES[b]
        return out


def warm() -> None:
    """Compile every kernel with a tiny fab (the daemon calls this before READY)."""
    from dispatch.model import random_fab

    m = random_fab(0, n_groups=3, n_lots=8)
    d = Dispatcher(m, Policy(preset="fabd"))
    d.score(0.0)
    d.assign(0.0)
    fab, pol, ws = d._ensure()
    out_lot = np.zeros(4, np.int32)
    out_key = np.zeros((4, ws.lot_base.shape[1]))
    score_tool(0, 0.0, fab, pol, ws, out_lot, out_key)
    tool_available(0, 0.0, fab, pol)
    candidate_features(0, 0, 0.0, fab, ws, np.zeros(N_RULES))
