"""Turn a parsed SMT2020 Dataset into the flat numpy arrays the simulation kernel runs on.

Everything is in minutes. Steps of all routes are concatenated (`route_start`),
tools of one family are contiguous (`fam_tool_start`). Lots are the initial WIP
first, then every release of the order file up to the horizon, sorted by release.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from dispatch.smt2020 import Dataset

# setup id -1 means "no setup" (PySCFabSim's ''); the matrix is indexed by (current + 1, new)
NO_SETUP = -1


class FabArrays(msgspec.Struct, kw_only=True):
    """The fab as arrays (see the module docstring); built once per dataset and horizon."""

    # families and tools
    family_names: list[str]
    fam_tool_start: np.ndarray
    fam_tool_count: np.ndarray
    fam_load_min: np.ndarray
    fam_unload_min: np.ndarray
    fam_cascading: np.ndarray            # STNCAP == 2: load/unload overlap processing
    tool_family: np.ndarray
    # routes and steps
    route_names: list[str]
    route_start: np.ndarray
    route_len: np.ndarray
    st_route: np.ndarray
    st_family: np.ndarray
    st_name: np.ndarray                  # DESC id: lots batch together by step name
    st_pt_mean: np.ndarray               # whole-lot (or whole-batch) processing time
    st_pt_half: np.ndarray               # uniform half width, 0 for constant
    st_cascade: np.ndarray               # machine time if cascading, -1 if the tool is busy for pt
    st_bmin: np.ndarray                  # lots
    st_bmax: np.ndarray                  # lots (1 = no batching)
    st_setup: np.ndarray                 # setup id or -1
    st_setup_time: np.ndarray            # step's own setup time, -1 = from the setup matrix
    st_rework_to: np.ndarray             # step index to go back to, -1 none
    st_rework_pct: np.ndarray
    st_rework_slot: np.ndarray           # compact index among rework steps (compat bookkeeping)
    st_sample_pct: np.ndarray
    st_cqt_to: np.ndarray                # step index where the queue-time limit ends, -1 none
    st_cqt_min: np.ndarray
    st_ded_set: np.ndarray               # SVESTN: slot that records the tool this step ran on, -1 none
    st_ded_use: np.ndarray               # slot whose recorded tool this step must use, -1 none
    st_remaining_min: np.ndarray         # mean processing time of this step and all after it
    st_transport_mean: np.ndarray        # transport into this step
    st_transport_half: np.ndarray
    # setups
    setup_names: list[str]
    setup_matrix: np.ndarray             # [cur + 1, new] minutes
    setup_min_run: np.ndarray            # [setup] lots, 0 = none
    # time-based calendars, one row per (calendar, tool)
    cal_tool: np.ndarray
    cal_is_down: np.ndarray              # 1 breakdown (exponential), 0 PM (uniform repair)
    cal_first_min: np.ndarray            # first occurrence
    cal_every_mean: np.ndarray           # MTTF (exponential) or MTBPM (constant)
    cal_repair_mean: np.ndarray
    cal_repair_half: np.ndarray
    # piece-based PMs, CSR by tool
    tool_pm_start: np.ndarray
    tool_pm_count: np.ndarray
    pm_every_pieces: np.ndarray
    pm_first_pieces: np.ndarray
    pm_repair_mean: np.ndarray
    pm_repair_half: np.ndarray
    # lots
    lot_types: list[str]
    lot_names: list[str]
    lot_type: np.ndarray
    lot_route: np.ndarray
    lot_first_step: np.ndarray           # step index (absolute) the lot waits for at release
    lot_priority: np.ndarray
    lot_pieces: np.ndarray
    lot_release_min: np.ndarray          # when it enters the fab in the simulation (>= 0)
    lot_start_min: np.ndarray            # cycle time counts from here (< 0 for initial WIP)
    lot_due_min: np.ndarray
    lot_is_wip: np.ndarray
    pieces_per_lot: int = 25


def build(ds: Dataset, horizon_min: float, *, stagger_pm: bool = True) -> FabArrays:
    """Return the arrays for `ds`, with releases up to `horizon_min` (plus one per order).

    stagger_pm: spread a family's first PM over its tools (FOA / n x (k + 1)); PySCFabSim's
    release gives every tool of a family the same first occurrence, so all of them go down
    together (compat mode builds with False).
    """
    fams = list(ds.families.values())
    fam_index = {f.name: i for i, f in enumerate(fams)}
    counts = np.array([max(1, f.count) for f in fams], dtype=np.int32)
    starts = np.zeros(len(fams), dtype=np.int32)
    starts[1:] = np.cumsum(counts)[:-1]
    tool_family = np.repeat(np.arange(len(fams), dtype=np.int32), counts)

    pieces = max([o.pieces for o in ds.orders] + [w.pieces for w in ds.wip] + [1])

    setups: dict[str, int] = {}

    def setup_id(name: str) -> int:
        if not name:
            return NO_SETUP
        return setups.setdefault(name, len(setups))

    for (cur, new) in ds.setup_times:
        setup_id(cur)
        setup_id(new)
    for s in ds.min_runs:
        setup_id(s)

    names: dict[str, int] = {}
    route_names = list(ds.routes)
    route_start, route_len = [], []
    rows: list[tuple] = []
    rework_slots = 0
    tr = ds.transport
    for rname in route_names:
        steps = ds.routes[rname]
        base = len(rows)
        route_start.append(base)
        route_len.append(len(steps))
        for i, s in enumerate(steps):
            mult = pieces if s.per == "per_piece" else 1
            uniform = s.pdist == "uniform"
            if s.part_interval_min > 0:
                # cascading per wafer: first wafer + (pieces - 1) intervals; tool busy pieces * interval
                mean = s.ptime_min + s.part_interval_min * (pieces - 1)
                half = s.ptime2_min / 2 if uniform else 0.0
                cascade = s.part_interval_min * pieces
            else:
                mean = s.ptime_min * mult
                half = s.ptime2_min * mult / 2 if uniform else 0.0
                cascade = s.batch_interval_min if s.batch_interval_min > 0 else -1.0
            bmin = max(1, s.batch_min // pieces) if s.batch_min else 1
            bmax = max(1, s.batch_max // pieces) if s.batch_max else 1
            rw = s.rework_step - 1 if s.rework_step > 0 and s.rework_pct > 0 else -1
            slot = -1
            if rw >= 0:
                slot = rework_slots
                rework_slots += 1
            cqt_to = s.cqt_to_step - 1 if s.cqt_to_step > 0 and s.cqt_min > 0 else -1
            rows.append((
                len(route_start) - 1, fam_index[s.family], names.setdefault(s.desc, len(names)),
                mean, half, cascade, bmin, bmax, setup_id(s.setup),
                s.setup_time_min if s.setup_time_min > 0 else -1.0,
                base + rw if rw >= 0 else -1, s.rework_pct, slot, s.sample_pct,
                base + cqt_to if cqt_to >= 0 else -1, s.cqt_min if cqt_to >= 0 else 0.0,
                0.0 if i == 0 else tr.time_min, 0.0 if i == 0 or tr.dist != "uniform" else tr.time2_min / 2,
            ))
    cols = list(zip(*rows, strict=True))

    # lot-to-lens dedication: a step with SVESTN = yes pins the tool for step FORSTEP
    ded_set = np.full(len(rows), -1, dtype=np.int32)
    ded_use = np.full(len(rows), -1, dtype=np.int32)
    n_ded = 0
    for rname, base in zip(route_names, route_start, strict=True):
        steps = ds.routes[rname]
        for i, st in enumerate(steps):
            if st.same_tool and 0 < st.same_tool_step <= len(steps):
                target = base + st.same_tool_step - 1
                if ded_use[target] < 0:
                    ded_use[target] = n_ded
                    n_ded += 1
                ded_set[base + i] = ded_use[target]

    def col(k: int, dt) -> np.ndarray:
        return np.array(cols[k], dtype=dt)

    st_pt_mean = col(3, np.float64)
    remaining = np.zeros(len(rows), dtype=np.float64)
    for r, (b, n) in enumerate(zip(route_start, route_len, strict=True)):
        del r
        remaining[b:b + n] = np.cumsum(st_pt_mean[b:b + n][::-1])[::-1]

    ns = max(1, len(setups))
    matrix = np.zeros((ns + 1, ns), dtype=np.float64)
    anyfrom = {new: v for (cur, new), v in ds.setup_times.items() if not cur}
    for new, v in anyfrom.items():
        matrix[:, setups[new]] = v
    for (cur, new), v in ds.setup_times.items():
        if cur:
            matrix[setups[cur] + 1, setups[new]] = v
    min_run = np.zeros(ns, dtype=np.int32)
    for s, n in ds.min_runs.items():
        min_run[setups[s]] = n

    # calendars
    cal_rows: list[tuple] = []
    pm_by_tool: list[list[tuple]] = [[] for _ in range(len(tool_family))]
    for a in ds.attachments:
        if a.res_type == "stngrp":
            tools = [t for f in fams if f.area == a.res_name
                     for t in range(starts[fam_index[f.name]], starts[fam_index[f.name]] + counts[fam_index[f.name]])]
        elif a.res_name in fam_index:
            fi = fam_index[a.res_name]
            tools = list(range(starts[fi], starts[fi] + counts[fi]))
        else:
            continue
        if not tools:
            continue
        if a.kind == "down":
            dc = ds.down_calendars.get(a.calendar)
            if dc is None:
                continue
            for t in tools:
                # first failure: -(FOA) for an exponential FOA (sampled in the kernel), else the constant
                first = -a.foa_min if a.foa_dist == "exponential" else a.foa_min
                cal_rows.append((t, 1, first, dc.mttf_min, dc.mttr_min, 0.0))
        else:
            pm = ds.pm_calendars.get(a.calendar)
            if pm is None:
                continue
            half = pm.mttr2_min / 2 if pm.mttr_dist == "uniform" else 0.0
            if pm.mtbpm_pieces > 0:
                for k, t in enumerate(tools):
                    first = a.foa_pieces if a.foa_pieces else pm.mtbpm_pieces
                    if stagger_pm:
                        first = first / len(tools) * (k + 1)
                    pm_by_tool[t].append((pm.mtbpm_pieces, first, pm.mttr_min, half))
            else:
                for k, t in enumerate(tools):
                    if a.foa_dist != "constant":
                        first = -a.foa_min
                    elif stagger_pm:
                        first = a.foa_min / len(tools) * (k + 1)
                    else:
                        first = a.foa_min
                    cal_rows.append((t, 0, first, pm.mtbpm_min, pm.mttr_min, half))
    cal = list(zip(*cal_rows, strict=True)) if cal_rows else [[] for _ in range(6)]
    pm_start = np.zeros(len(tool_family), dtype=np.int32)
    pm_count = np.array([len(x) for x in pm_by_tool], dtype=np.int32)
    pm_start[1:] = np.cumsum(pm_count)[:-1]
    pm_flat = [p for x in pm_by_tool for p in x]
    pmc = list(zip(*pm_flat, strict=True)) if pm_flat else [[] for _ in range(4)]

    # lots: initial WIP (enters at t=0), then releases
    lot_types: dict[str, int] = {}
    due_offset = {o.lot_type: o.due_offset_min for o in ds.orders}
    lots: list[tuple] = []
    route_idx = {r: i for i, r in enumerate(route_names)}
    for w in ds.wip:
        r = route_idx[ds.parts[w.part].route]
        if w.current_step >= route_len[r] - 1 or w.current_step < 1:
            continue   # PySCFabSim drops lots at their last step
        ltype = w.lot_type or w.lot
        # the file gives no release date; the due date minus the order's due offset estimates it
        start = w.due_min - due_offset.get(ltype, 0.0) if ltype in due_offset else w.start_min
        lots.append((lot_types.setdefault(ltype, len(lot_types)), r,
                     route_start[r] + w.current_step - 1, w.priority, w.pieces, 0.0, start, w.due_min,
                     1, w.lot))
    for o in ds.orders:
        r = route_idx[ds.parts[o.part].route]
        ti = lot_types.setdefault(o.lot_type, len(lot_types))
        for i in range(o.count):
            rel = o.start_min + i * o.interval_min
            for _ in range(max(1, o.lots_per_release)):
                lots.append((ti, r, route_start[r], o.priority, o.pieces, rel, rel,
                             rel + o.due_offset_min, 0, ""))
            if rel > horizon_min:
                break
    lots.sort(key=lambda x: x[5])
    lc = list(zip(*lots, strict=True))
    lot_names = [n or f"{list(lot_types)[t]}_{k}" for k, (t, n) in enumerate(zip(lc[0], lc[9], strict=True))]

    return FabArrays(
        family_names=[f.name for f in fams], fam_tool_start=starts, fam_tool_count=counts,
        fam_load_min=np.array([f.load_min for f in fams]), fam_unload_min=np.array([f.unload_min for f in fams]),
        fam_cascading=np.array([1 if math.isclose(f.capacity, 2.0) else 0 for f in fams], dtype=np.int32),
        tool_family=tool_family,
        route_names=route_names, route_start=np.array(route_start, dtype=np.int32),
        route_len=np.array(route_len, dtype=np.int32),
        st_route=col(0, np.int32), st_family=col(1, np.int32), st_name=col(2, np.int32),
        st_pt_mean=st_pt_mean, st_pt_half=col(4, np.float64), st_cascade=col(5, np.float64),
        st_bmin=col(6, np.int32), st_bmax=col(7, np.int32), st_setup=col(8, np.int32),
        st_setup_time=col(9, np.float64), st_rework_to=col(10, np.int32), st_rework_pct=col(11, np.float64),
        st_rework_slot=col(12, np.int32), st_sample_pct=col(13, np.float64), st_cqt_to=col(14, np.int32),
        st_cqt_min=col(15, np.float64), st_ded_set=ded_set, st_ded_use=ded_use, st_remaining_min=remaining,
        st_transport_mean=col(16, np.float64), st_transport_half=col(17, np.float64),
        setup_names=list(setups), setup_matrix=matrix, setup_min_run=min_run,
        cal_tool=np.array(cal[0], dtype=np.int32), cal_is_down=np.array(cal[1], dtype=np.int32),
        cal_first_min=np.array(cal[2], dtype=np.float64), cal_every_mean=np.array(cal[3], dtype=np.float64),
        cal_repair_mean=np.array(cal[4], dtype=np.float64), cal_repair_half=np.array(cal[5], dtype=np.float64),
        tool_pm_start=pm_start, tool_pm_count=pm_count,
        pm_every_pieces=np.array(pmc[0], dtype=np.float64), pm_first_pieces=np.array(pmc[1], dtype=np.float64),
        pm_repair_mean=np.array(pmc[2], dtype=np.float64), pm_repair_half=np.array(pmc[3], dtype=np.float64),
        lot_types=list(lot_types), lot_names=lot_names,
        lot_type=np.array(lc[0], dtype=np.int32), lot_route=np.array(lc[1], dtype=np.int32),
        lot_first_step=np.array(lc[2], dtype=np.int32), lot_priority=np.array(lc[3], dtype=np.int32),
        lot_pieces=np.array(lc[4], dtype=np.int32), lot_release_min=np.array(lc[5], dtype=np.float64),
        lot_start_min=np.array(lc[6], dtype=np.float64), lot_due_min=np.array(lc[7], dtype=np.float64),
        lot_is_wip=np.array(lc[8], dtype=np.int32), pieces_per_lot=pieces,
    )
