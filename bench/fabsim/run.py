"""Run the SMT2020 simulation and compute the KPIs the literature reports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import msgspec
import numpy as np

from bench.fabsim import engine, model, policy
from daemon.errors import FatalError
from dispatch import smt2020


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One simulation run."""

    days: float = 730.0                  # simulated horizon
    warmup_days: float = 0.0             # lots released before this day do not count in CT/on-time
    policy: str = "fifo"                 # fifo | cr | fabd | deliver (dispatch.config presets) or a file
    compat: bool = False                 # reproduce PySCFabSim's simplifications
    seed: int = 0
    what_if: tuple[str, ...] = ()        # capacity scenarios (WHAT_IF), applied to the fab model


# What-if scenarios: the fab with one kind of capacity loss removed. They bound what any
# dispatch policy can gain from that loss (a policy can at best avoid all of it).
WHAT_IF: dict[str, str] = {
    "no-setups": "every setup takes no time",
    "no-dedication": "no lot-to-lens dedication: a lot may use any tool of the family",
}


def _apply_what_if(fab: model.FabArrays, what_if: tuple[str, ...]) -> model.FabArrays:
    unknown = sorted(set(what_if) - set(WHAT_IF))
    if unknown:
        raise ValueError(f"unknown what-if scenario(s) {unknown}; one of {sorted(WHAT_IF)}")
    changed: dict[str, np.ndarray] = {}
    if "no-setups" in what_if:
        changed["setup_matrix"] = np.zeros_like(fab.setup_matrix)
        changed["st_setup_time"] = np.where(fab.st_setup_time >= 0.0, 0.0, fab.st_setup_time)
    if "no-dedication" in what_if:
        changed["st_ded_use"] = np.full_like(fab.st_ded_use, -1)
    return msgspec.structs.replace(fab, **changed) if changed else fab


class LotTypeKpi(msgspec.Struct, kw_only=True):
    """Cycle time and delivery of one lot type (Lot_3, HotLot_4, ...)."""

    cycle_time_days: float
    lots_finished: int
    on_time_share: float
    cycle_times_days: list[float] = []


# Cycle time by release window: a trend across windows means the fab had not settled (a
# start-up transient, or WIP still growing), so the horizon's mean depends on the horizon.
COHORT_DAYS = 90.0
COHORT_MIN_FINISHED = 0.95   # a window is reported once this share of its lots has finished


class CohortKpi(msgspec.Struct, kw_only=True):
    """Lots of one type released in one window of the run (initial WIP excluded)."""

    released_from_day: float
    lots_finished: int
    cycle_time_days: float


class LotTrace(msgspec.Struct, kw_only=True):
    """The steps one lot started, in order (1-based step numbers of its route)."""

    lot: str
    lot_type: str
    route: str
    steps: list[int]
    finished: bool


class SimResult(msgspec.Struct, kw_only=True):
    """What one run produced."""

    wall_s: float
    sim_days: float
    decisions: int
    lots_finished: int
    lots_counted: int
    cqt_violations: int
    by_lot_type: dict[str, LotTypeKpi]
    utilisation_by_family: dict[str, float]
    wip_by_day: list[int]
    finished_by_day: list[int]
    cycle_time_by_release: dict[str, list[CohortKpi]] = {}   # per lot type, COHORT_DAYS windows
    wait_days_by_family: dict[str, float] = {}      # mean wait per visit
    visits_by_family: dict[str, int] = {}
    setup_share_by_family: dict[str, float] = {}    # of the tools' available time
    traces: list[LotTrace] = []


class SimError(FatalError):
    """The simulation kernel stopped early (an internal capacity was exceeded): give up this run."""


def warm() -> None:
    """Compile the kernel with a tiny fab so the first real run does not pay for it."""
    ds_small = _tiny_dataset()
    for compat in (False, True):
        run(ds_small, SimConfig(days=1.0, compat=compat), model_cache={})


def run(ds: smt2020.Dataset, cfg: SimConfig, *, model_cache: dict | None = None,
        on_progress: Callable[[float], None] | None = None, trace_lots: int = 0) -> SimResult:
    """Simulate `ds` under `cfg` and return the KPIs (and the steps of the first `trace_lots` lots)."""
    horizon = cfg.days * 1440.0
    key = (ds.name, id(ds), horizon, cfg.compat)
    cache = model_cache if model_cache is not None else {}
    fab = cache.get(key)
    if fab is None:
        fab = model.build(ds, horizon, stagger_pm=not cfg.compat)
        cache[key] = fab
    fab = _apply_what_if(fab, cfg.what_if)
    pol = policy.compile_for(cfg.policy, fab.family_names)
    # lots batch by step name in PySCFabSim, by route step (crit_sameroutestep) otherwise
    bkey = fab.st_name if cfg.compat else np.arange(fab.st_name.shape[0], dtype=np.int32)
    prog = np.zeros(1, dtype=np.float64)
    trace = np.full((trace_lots, int(fab.route_len.max()) * 2 if trace_lots else 0), -1, dtype=np.int32)
    args = (
        fab.fam_tool_start, fab.fam_tool_count, fab.fam_load_min, fab.fam_unload_min, fab.fam_cascading,
        fab.tool_family,
        fab.route_start, fab.route_len, fab.st_family, bkey, fab.st_pt_mean, fab.st_pt_half,
        fab.st_cascade, fab.st_bmin, fab.st_bmax, fab.st_setup, fab.st_setup_time, fab.st_rework_to,
        fab.st_rework_pct, fab.st_rework_slot, fab.st_sample_pct, fab.st_cqt_to, fab.st_cqt_min,
        fab.st_ded_set, fab.st_ded_use, fab.st_remaining_min, fab.st_transport_mean, fab.st_transport_half,
        fab.setup_matrix, fab.setup_min_run,
        fab.cal_tool, fab.cal_is_down, fab.cal_first_min, fab.cal_every_mean, fab.cal_repair_mean,
        fab.cal_repair_half, fab.tool_pm_start, fab.tool_pm_count, fab.pm_every_pieces, fab.pm_first_pieces,
        fab.pm_repair_mean, fab.pm_repair_half,
        fab.lot_route, fab.lot_first_step, fab.lot_priority, fab.lot_pieces, fab.lot_release_min,
        fab.lot_due_min,
        pol.level, pol.weight, pol.qt_horizon_min, pol.qt_gate, pol.qt_gate_factor, pol.batch_fill,
        pol.batch_max_wait_min, pol.balance_target_wait_min, pol.deliver_flow_factor,
        pol.slack_flow_factor, pol.setup_switch_lots,
        horizon, 1 if cfg.compat else 0, int(cfg.seed), int(fab.pieces_per_lot), prog, trace,
    )
    t0 = time.perf_counter()
    out: list = []
    if on_progress is None:
        out.append(engine.simulate(*args))
    else:
        # the kernel releases the GIL; report its clock while it runs
        th = threading.Thread(target=lambda: out.append(engine.simulate(*args)), name="fabsim-kernel")
        th.start()
        while th.is_alive():
            th.join(0.25)
            on_progress(float(prog[0]) / 1440.0)
        on_progress(float(prog[0]) / 1440.0)
    wall = time.perf_counter() - t0
    if not out:
        raise SimError("simulation kernel failed")
    (status, t_end, decisions, cqt_viol, done_at, _wait, _steps, wip_day, out_day,
     busy, setup, pm, down, fam_wait, fam_visits) = out[0]
    if status != 0:
        raise SimError(f"simulation stopped at day {t_end / 1440.0:.1f}: capacity exceeded (status {status})")
    res = _kpis(fab, cfg, wall, t_end, int(decisions), int(cqt_viol), done_at, wip_day, out_day, busy,
                setup, pm, down)
    res.wait_days_by_family = {
        name: float(fam_wait[f] / fam_visits[f] / 1440.0) if fam_visits[f] else 0.0
        for f, name in enumerate(fab.family_names)}
    res.visits_by_family = {name: int(fam_visits[f]) for f, name in enumerate(fab.family_names)}
    res.traces = [
        LotTrace(lot=fab.lot_names[i], lot_type=fab.lot_types[fab.lot_type[i]],
                 route=fab.route_names[fab.lot_route[i]],
                 steps=[int(x - fab.route_start[fab.lot_route[i]]) + 1 for x in trace[i] if x >= 0],
                 finished=not np.isnan(done_at[i]))
        for i in range(min(trace_lots, trace.shape[0]))]
    return res


def _kpis(fab, cfg, wall, t_end, decisions, cqt_viol, done_at, wip_day, out_day, busy, setup, pm,
          down) -> SimResult:
    horizon = cfg.days * 1440.0
    finished = ~np.isnan(done_at)
    counted = finished & (fab.lot_release_min >= cfg.warmup_days * 1440.0)
    if cfg.warmup_days <= 0.0:
        counted = finished            # W = 0: every lot finished, initial WIP included
    ct_days = (done_at - fab.lot_start_min) / 1440.0
    on_time = done_at <= fab.lot_due_min
    by_type: dict[str, LotTypeKpi] = {}
    for ti, name in enumerate(fab.lot_types):
        sel = counted & (fab.lot_type == ti)
        n_fin = int(np.count_nonzero(finished & (fab.lot_type == ti)))
        n = int(np.count_nonzero(sel))
        by_type[name] = LotTypeKpi(
            cycle_time_days=float(ct_days[sel].mean()) if n else float("nan"),
            lots_finished=n_fin,
            on_time_share=float(on_time[sel].mean()) if n else float("nan"),
            cycle_times_days=ct_days[sel].tolist(),
        )
    by_release = {name: _cohorts(fab, ct_days, finished, ti, cfg.days)
                  for ti, name in enumerate(fab.lot_types)}
    util: dict[str, float] = {}
    setup_share: dict[str, float] = {}
    for f, name in enumerate(fab.family_names):
        s = fab.fam_tool_start[f]
        e = s + fab.fam_tool_count[f]
        avail = horizon - pm[s:e].mean() - down[s:e].mean()
        util[name] = float(busy[s:e].mean() / avail) if avail > 0 else 0.0
        setup_share[name] = float(setup[s:e].mean() / avail) if avail > 0 else 0.0
    n_days = int(cfg.days) + 1
    return SimResult(
        wall_s=wall, sim_days=float(t_end / 1440.0), decisions=decisions,
        lots_finished=int(np.count_nonzero(finished)), lots_counted=int(np.count_nonzero(counted)),
        cqt_violations=cqt_viol, by_lot_type=by_type, utilisation_by_family=util,
        setup_share_by_family=setup_share, cycle_time_by_release=by_release,
        wip_by_day=wip_day[:n_days].tolist(), finished_by_day=out_day[:n_days].tolist(),
    )


def _cohorts(fab, ct_days, finished, lot_type: int, days: float) -> list[CohortKpi]:
    """Return the mean cycle time of each COHORT_DAYS release window whose lots have finished."""
    released = (fab.lot_start_min >= 0.0) & (fab.lot_type == lot_type)
    rel_day = fab.lot_release_min / 1440.0
    out = []
    for start in np.arange(0.0, days, COHORT_DAYS):
        sel = released & (rel_day >= start) & (rel_day < start + COHORT_DAYS)
        n = int(np.count_nonzero(sel))
        done = sel & finished
        n_done = int(np.count_nonzero(done))
        if n == 0:
            continue
        if n_done < COHORT_MIN_FINISHED * n:
            break    # later windows have finished even less: their fast lots would bias the mean
        out.append(CohortKpi(released_from_day=float(start), lots_finished=n_done,
                             cycle_time_days=float(ct_days[done].mean())))
    return out


def _tiny_dataset() -> smt2020.Dataset:
    """Return a two-family, three-step fab (used to compile the kernel)."""
    fam = {
        "A": smt2020.ToolFamily(name="A", count=2, area="X", load_min=1.0, unload_min=1.0),
        "B": smt2020.ToolFamily(name="B", count=1, area="Y", setup_group="G"),
    }
    steps = [
        smt2020.RouteStep(route="r", step=1, desc="s1", family="A", pdist="uniform", ptime_min=50.0,
                          ptime2_min=5.0, per="per_batch", batch_min=25, batch_max=50, cqt_to_step=2,
                          cqt_min=60.0),
        smt2020.RouteStep(route="r", step=2, desc="s2", family="B", pdist="constant", ptime_min=1.0,
                          per="per_piece", setup="S1", rework_step=1, rework_pct=5.0),
        smt2020.RouteStep(route="r", step=3, desc="s3", family="A", pdist="constant", ptime_min=10.0,
                          sample_pct=50.0, batch_interval_min=3.0),
    ]
    return smt2020.Dataset(
        name="tiny", epoch="2018-01-01T00:00:00", families=fam,
        parts={"p": smt2020.Part(name="p", route="r")}, routes={"r": steps},
        setup_times={("", "S1"): 10.0}, min_runs={"S1": 2}, setup_groups={"G": ["S1"]},
        pm_calendars={"PM": smt2020.PmCalendar(name="PM", kind="mtbpm_by_cal", mtbpm_min=600.0,
                                                mttr_dist="uniform", mttr_min=30.0, mttr2_min=6.0)},
        down_calendars={"BD": smt2020.DownCalendar(name="BD", kind="mttf_by_cal", mttf_min=300.0,
                                                    mttr_min=20.0)},
        attachments=[smt2020.Attachment(calendar="PM", kind="pm", res_type="stnfam", res_name="A",
                                        foa_min=100.0),
                     smt2020.Attachment(calendar="BD", kind="down", res_type="stngrp", res_name="Y",
                                        foa_dist="exponential", foa_min=300.0)],
        orders=[smt2020.Order(lot_type="L", part="p", priority=10, pieces=25, start_min=0.0,
                              interval_min=30.0, count=2000, due_offset_min=600.0)],
        wip=[smt2020.WipLot(lot="Init_L_1", part="p", priority=10, pieces=25, start_min=0.0,
                            current_step=2, due_min=300.0, lot_type="L")],
        transport=smt2020.Transport(dist="uniform", time_min=5.0, time2_min=2.0),
    )
