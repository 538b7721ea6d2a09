"""Plain-Python reference of the dispatch policy: the same rankings as the numba scorer, slowly.

Written from the policy's definition (dispatch.config and the scorer's
docstring) with lists, dicts and `sorted`, so the tests can check the kernel
against it on random fabs and the benchmark can measure the kernel against it.
"""

from __future__ import annotations

import math

from dispatch.config import RULES, PolicyArrays, n_levels
from dispatch.model import NO_DUE_MIN, FabArrays

__all__ = ["reference_assign", "reference_lists"]

_UP_MAX = 1
_SATURATED_MIN = 1.0e9
_IDX = {r: k for k, r in enumerate(RULES)}


def _ptime(per: int, pt: float, wafers: int, bmax: int) -> float:
    if per == 1:
        return pt * wafers
    if per == 2 and bmax > 0:
        return pt * wafers / bmax
    return pt


def reference_lists(now_min: float, fab: FabArrays, pol: PolicyArrays, max_list: int
                    ) -> dict[int, list[tuple[int, tuple[float, ...], list[float]]]]:
    """Return {tool index: [(lot index, keys, features), ...] best first} for every available tool."""
    a = {name: getattr(fab, name).tolist() for name in fab._fields}
    level = pol.level.tolist()
    weight = pol.weight.tolist()
    nl = n_levels(pol)
    n_groups = len(level)
    step_group, step_recipe = a["step_group"], a["step_recipe"]

    # group workload: tools first, then waiting lots not on hold (same order as the kernel)
    up = [0] * n_groups
    work = [0.0] * n_groups
    qt_work = [0.0] * n_groups   # busy time left + work of queue-time-window lots
    in_setup: dict[tuple[int, int], int] = {}     # (group, setup) -> tools up in it
    need_setup: dict[tuple[int, int], int] = {}   # (group, setup) -> lots waiting, not held
    for t, g in enumerate(a["tool_group"]):
        if a["tool_e10"][t] <= _UP_MAX and not a["tool_inhibited"][t]:
            up[g] += 1
            if a["tool_setup"][t] >= 0:
                in_setup[g, a["tool_setup"][t]] = in_setup.get((g, a["tool_setup"][t]), 0) + 1
            rem = a["tool_busy_until_min"][t] - now_min
            if rem > 0.0:
                work[g] += rem
                qt_work[g] += rem
    waiting = [i for i, st in enumerate(a["lot_state"]) if st == 0]
    incoming: dict[int, int] = {}   # wafers one step before a batch step, per recipe
    for i, st in enumerate(a["lot_state"]):
        if st <= 1 and not a["lot_hold"][i]:
            sn = a["step_next"][a["lot_step"][i]]
            if sn >= 0 and a["step_batch_max"][sn] > 0:
                incoming[step_recipe[sn]] = incoming.get(step_recipe[sn], 0) + a["lot_wafers"][i]
    recipe_wafers: dict[int, int] = {}
    recipe_oldest: dict[int, float] = {}
    for i in waiting:
        s = a["lot_step"][i]
        if a["lot_hold"][i]:
            continue
        g = step_group[s]
        if a["step_setup"][s] >= 0:
            need_setup[g, a["step_setup"][s]] = need_setup.get((g, a["step_setup"][s]), 0) + 1
        bmax = a["step_batch_max"][s]
        pt = _ptime(a["step_ptime_per"][s], a["step_ptime_min"][s], a["lot_wafers"][i], bmax)
        work[g] += pt
        if a["lot_qt_step"][i] >= 0:
            qt_work[g] += pt
        if bmax > 0:
            r = step_recipe[s]
            recipe_wafers[r] = recipe_wafers.get(r, 0) + a["lot_wafers"][i]
            recipe_oldest[r] = min(recipe_oldest.get(r, math.inf), a["lot_arrival_min"][i])
    wait = [work[g] / up[g] if up[g] > 0 else _SATURATED_MIN for g in range(n_groups)]
    qt_wait = [qt_work[g] / up[g] if up[g] > 0 else _SATURATED_MIN for g in range(n_groups)]

    # per lot: features, base keys, and whether it may be dispatched at all
    feats: dict[int, list[float]] = {}
    base: dict[int, list[float]] = {}
    queue: dict[int, list[int]] = {}
    for i in waiting:
        s = a["lot_step"][i]
        g = step_group[s]
        f = [0.0] * len(RULES)
        if a["lot_qt_step"][i] >= 0:
            h = pol.qt_horizon_min[g].item()
            if h <= 0.0:
                f[_IDX["qtime"]] = 1.0
            else:
                f[_IDX["qtime"]] = h / (h + max(a["lot_qt_deadline_min"][i] - now_min, 0.0))
        f[_IDX["hot"]] = float(a["lot_hot"][i])
        f[_IDX["priority"]] = float(a["lot_priority"][i])
        rpt = max(a["step_rpt_min"][s], 1.0)
        to_due = a["lot_due_min"][i] - now_min
        ratio = to_due / rpt
        f[_IDX["cr"]] = -ratio
        if a["lot_due_min"][i] >= NO_DUE_MIN:
            f[_IDX["slack"]] = 0.0
        else:
            f[_IDX["slack"]] = -((to_due - pol.slack_flow_factor[g].item() * rpt) / 1440.0)
        f[_IDX["deliver"]] = 0.0 if ratio >= pol.deliver_flow_factor[g].item() else -1.0
        bmax = a["step_batch_max"][s]
        w = recipe_wafers.get(step_recipe[s], 0)
        f[_IDX["batch"]] = min(w, bmax) / bmax if bmax > 0 else 0.0
        sn = a["step_next"][s]
        if sn >= 0:
            tgt = pol.balance_target_wait_min[g].item()
            f[_IDX["balance"]] = min(1.0, max(-1.0, (tgt - wait[step_group[sn]]) / tgt))
        f[_IDX["fifo"]] = (now_min - a["lot_arrival_min"][i]) / 60.0
        feats[i] = f
        b = [0.0] * nl
        for r in range(len(RULES)):
            if RULES[r] in ("minrun", "setup"):
                continue
            if level[g][r] >= 0:
                b[level[g][r]] += weight[g][r] * f[r]
        base[i] = b
        if a["lot_hold"][i]:
            continue
        tq = a["step_qt_to"][s]
        if (tq >= 0 and pol.qt_gate[g]
                and qt_wait[step_group[tq]] > pol.qt_gate_factor[g].item() * a["step_qt_limit_min"][s]):
            continue
        if bmax > 0:
            if w < a["step_batch_min"][s]:
                continue
            if (w < pol.batch_fill[g].item() * bmax and incoming.get(step_recipe[s], 0) > 0
                    and now_min - recipe_oldest[step_recipe[s]] < pol.batch_max_wait_min[g].item()):
                continue
        queue.setdefault(g, []).append(i)

    def setup_min(t: int, s: int) -> float:
        need, cur = a["step_setup"][s], a["tool_setup"][t]
        if need < 0 or cur == need:
            return 0.0
        if a["step_setup_time_min"][s] > 0.0:
            return a["step_setup_time_min"][s]
        for row in (cur + 1, 0):
            v = a["setup_change_min"][row][need]
            if not math.isnan(v):
                return v
        return 0.0

    def left_to_others(t: int, g: int, i: int) -> bool:
        # a tool does not change to a setup other tools up hold unless more than
        # setup_switch_lots lots per such tool wait for it; hot lots always may
        need, cur = a["step_setup"][a["lot_step"][i]], a["tool_setup"][t]
        k = pol.setup_switch_lots[g].item()
        holders = in_setup.get((g, need), 0)
        return (k > 0 and cur >= 0 and need >= 0 and need != cur and a["lot_hot"][i] == 0
                and holders > 0 and need_setup.get((g, need), 0) <= k * holders)

    def minrun(t: int, s: int) -> float:
        cur = a["tool_setup"][t]
        if cur >= 0 and a["tool_setup_runs"][t] < a["setup_min_runs"][cur] and a["step_setup"][s] != cur:
            return -1.0
        return 0.0

    out: dict[int, list[tuple[int, tuple[float, ...], list[float]]]] = {}
    for t, g in enumerate(a["tool_group"]):
        if a["tool_e10"][t] > _UP_MAX or a["tool_inhibited"][t]:
            continue
        if a["tool_busy_until_min"][t] > now_min + pol.lookahead_min[g].item():
            continue
        quals = set(a["qual_recipe"][a["qual_ptr"][t]:a["qual_ptr"][t + 1]])
        rows = []
        for i in queue.get(g, []):
            s = a["lot_step"][i]
            if step_recipe[s] not in quals or left_to_others(t, g, i):
                continue
            key = list(base[i])
            mr, su = minrun(t, s), -(setup_min(t, s) / 60.0)
            if level[g][_IDX["minrun"]] >= 0:
                key[level[g][_IDX["minrun"]]] += weight[g][_IDX["minrun"]] * mr
            if level[g][_IDX["setup"]] >= 0:
                key[level[g][_IDX["setup"]]] += weight[g][_IDX["setup"]] * su
            f = list(feats[i])
            f[_IDX["minrun"]], f[_IDX["setup"]] = mr, su
            rows.append((i, tuple(key), f))
        rows.sort(key=lambda row: (tuple(-k for k in row[1]), a["lot_arrival_min"][row[0]],
                                   a["lot_due_min"][row[0]], row[0]))
        out[t] = rows[:max_list]
    return out


def reference_assign(now_min: float, fab: FabArrays, pol: PolicyArrays) -> dict[int, int]:
    """Return {lot index: tool index}: each available tool, in index order, takes its best free lot.

    On a batch step the tool takes the free lots of the lead lot's recipe in its
    rank order up to the batch maximum, only if they reach the batch minimum.
    """
    lists = reference_lists(now_min, fab, pol, max_list=1 << 30)
    step, recipe = fab.lot_step.tolist(), fab.step_recipe.tolist()
    bmax_of, bmin_of, wafers = fab.step_batch_max.tolist(), fab.step_batch_min.tolist(), \
        fab.lot_wafers.tolist()
    taken: dict[int, int] = {}
    for t in sorted(lists):
        rows = [row[0] for row in lists[t]]
        failed = -1
        for p, lead in enumerate(rows):
            if lead in taken:
                continue
            s = step[lead]
            if bmax_of[s] <= 0:
                taken[lead] = t
                break
            rec = recipe[s]
            if rec == failed:
                continue
            picked, total = [], 0
            for i in rows[p:]:
                if i in taken or recipe[step[i]] != rec or total + wafers[i] > bmax_of[s]:
                    continue
                picked.append(i)
                total += wafers[i]
            if total >= bmin_of[s]:
                taken.update(dict.fromkeys(picked, t))
                break
            failed = rec
    return taken
