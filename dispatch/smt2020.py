"""Parse an SMT2020 dataset folder (tab-separated text files) into plain frozen Structs.

A pure parser: no numpy, no model. Every time is normalised to minutes; every
date becomes minutes since the dataset's epoch (the earliest release or start
date found in order.txt and WIP.txt, `Dataset.epoch`). Counts given in pieces
(wafers) stay in pieces and say so in the field name.

Files read (SMT2020, Kopp et al. 2020): tool.txt.1l (or tool.txt), route files
named in part.txt, part.txt, order.txt, WIP.txt, setup.txt, setupgrp.txt,
pmcal.txt, downcal.txt, attach.txt, fromto.txt. Missing optional files
(setup, setupgrp, pmcal, downcal, attach, fromto, WIP) give empty tables.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import msgspec

from dispatch.errors import ModelError

__all__ = [
    "Attachment",
    "Dataset",
    "DownCalendar",
    "Order",
    "Part",
    "PmCalendar",
    "RouteStep",
    "Smt2020Error",
    "ToolFamily",
    "Transport",
    "WipLot",
    "load",
]

DATE_FORMAT = "%m/%d/%y %H:%M:%S"

_MINUTES = {
    "sec": 1.0 / 60.0, "secs": 1.0 / 60.0, "s": 1.0 / 60.0, "second": 1.0 / 60.0,
    "seconds": 1.0 / 60.0,
    "min": 1.0, "mins": 1.0, "minute": 1.0, "minutes": 1.0, "": 1.0,
    "hr": 60.0, "hrs": 60.0, "hour": 60.0, "hours": 60.0, "h": 60.0,
    "day": 1440.0, "days": 1440.0, "d": 1440.0,
    "week": 10080.0, "weeks": 10080.0, "wk": 10080.0,
}


# The SMT2020 HVLM dataset ships with the repository (data/smt2020, public, 372 KB);
# FABD_SMT2020_DATASET points elsewhere (another SMT2020 fab in the same format).
DEFAULT_DATASET = Path(os.environ.get(
    "FABD_SMT2020_DATASET",
    Path(__file__).resolve().parents[1] / "data" / "smt2020" / "HVLM"))


class Smt2020Error(ModelError):
    """A dataset file is missing or malformed: fix the file named (with its line) in the message."""


class ToolFamily(msgspec.Struct, frozen=True, kw_only=True):
    """One tool family (STNFAM): `count` identical tools that share one queue."""

    name: str
    station: str = ""
    count: int = 1                       # STNQTY
    area: str = ""                       # STNGRP (Diffusion, Litho, ...)
    rule: str = ""                       # RULE as given (rule_HotLotFIRST, rule_LSSU)
    ranking: tuple[str, ...] = ()        # FWLRANK split on ';'
    wake_ranking: str = ""               # WAKERESRANK
    batch_criterion: str = ""            # BATCHCRITF (crit_sameroutestep)
    batch_per: str = ""                  # BATCHPER (piece)
    load_min: float = 0.0                # LTIME
    unload_min: float = 0.0              # ULTIME
    capacity: float = 0.0                # STNCAP, 0 if not given
    action_list: str = ""                # STNFAMSTEP_ACTLIST
    location: str = ""                   # STNFAMLOC
    prerule_rwl: str = ""                # PRERULERWL
    setup_group: str = ""                # SETUPGRP, "" if none


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """A product and the route it follows."""

    name: str
    route: str
    route_file: str = ""
    part_group: str = ""
    part_family: str = ""


class RouteStep(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a route; times in minutes, batch sizes in wafers (0 if no batching)."""

    route: str
    step: int                            # 1-based, as in the file
    desc: str
    family: str                          # STNFAM
    pdist: str                           # "uniform", "constant", ...
    ptime_min: float                     # PTIME (per lot, per wafer or per batch)
    ptime2_min: float = 0.0              # PTIME2 (uniform: half width)
    per: str = "per_lot"                 # "per_lot" | "per_piece" | "per_batch"
    batch_min: int = 0                   # BATCHMN, wafers
    batch_max: int = 0                   # BATCHMX, wafers
    setup: str = ""                      # SETUP needed, "" if none
    setup_when: str = ""                 # WHEN ("need")
    setup_time_min: float = 0.0          # STIME at this step (if not from setup.txt)
    same_tool: bool = False              # SVESTN = yes: run on the tool that ran `same_tool_step`
    same_tool_step: int = 0              # FORSTEP
    batch_interval_min: float = 0.0      # BatchInterval (cascading batches)
    part_interval_min: float = 0.0       # PartInterval (cascading: next wafer enters after this)
    rework_step: int = 0                 # RWKSTEP: step to go back to, 0 if none
    rework_pct: float = 0.0              # REWORK, percent of lots
    rework_type: str = ""                # RWKTYPE ("lot")
    sample_pct: float = 100.0            # StepPercent: share of lots that do this step
    cqt_to_step: int = 0                 # STEP_CQT: queue-time limit runs until this step starts
    cqt_min: float = 0.0                 # CQT, minutes, 0 if none
    area: str = ""                       # IGNORE column: the tool area, informational


class ToolSetup(msgspec.Struct, frozen=True, kw_only=True):
    """Setup-group membership of one setup."""

    group: str
    setup: str
    min_run: int = 0


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """A release plan line: `count` releases of `lots_per_release` lots every `interval_min`."""

    lot_type: str                        # LOT, e.g. Lot_3, HotLot_3
    part: str
    priority: int
    pieces: int
    start_min: float                     # first release, minutes since epoch
    release_dist: str = "constant"       # RDIST
    interval_min: float = 0.0            # REPEAT
    count: int = 1                       # RPT#
    lots_per_release: int = 1            # LOTSPERRPT
    due_offset_min: float = 0.0          # DUE - START: each lot is due this long after release
    due_min: float = 0.0                 # DUE as a date, minutes since epoch
    order: str = ""
    hot: bool = False                    # HOTLOT = yes (the priority also marks hot lots)


class WipLot(msgspec.Struct, frozen=True, kw_only=True):
    """A lot already in the fab at t=0."""

    lot: str
    part: str
    priority: int
    pieces: int
    start_min: float                     # minutes since epoch (may be 0 or negative)
    current_step: int                    # CURSTEP, 1-based: the step it waits for
    due_min: float                       # minutes since epoch
    order: str = ""
    hot: bool = False
    lot_type: str = ""                   # from the lot name: Init_Lot_3_2 -> Lot_3


class PmCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """Preventive maintenance: every `mtbp` minutes (by_cal) or wafers (by_pieces)."""

    name: str
    kind: str                            # "mtbpm_by_cal" | "mtbpm_by_pieces"
    mtbpm_min: float = 0.0               # for mtbpm_by_cal
    mtbpm_pieces: float = 0.0            # for mtbpm_by_pieces
    mttr_dist: str = "constant"
    mttr_min: float = 0.0
    mttr2_min: float = 0.0
    area: str = ""


class DownCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """Random breakdowns: time to failure and time to repair distributions."""

    name: str
    kind: str                            # "mttf_by_cal"
    mttf_dist: str = "exponential"
    mttf_min: float = 0.0
    mttr_dist: str = "exponential"
    mttr_min: float = 0.0
    area: str = ""


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """Which calendar applies to which family (stnfam) or area (stngrp), and when it first fires."""

    calendar: str
    kind: str                            # "pm" | "down"
    res_type: str                        # "stnfam" | "stngrp"
    res_name: str
    foa_dist: str = "constant"           # first occurrence distribution
    foa_min: float = 0.0                 # first occurrence, minutes (time-based calendars)
    foa_pieces: float = 0.0              # first occurrence, wafers (piece-based calendars)


class Transport(msgspec.Struct, frozen=True, kw_only=True):
    """Transport time between two locations (SMT2020 has one: Fab -> Fab)."""

    from_loc: str = "Fab"
    to_loc: str = "Fab"
    dist: str = "constant"
    time_min: float = 0.0
    time2_min: float = 0.0


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """A whole SMT2020 dataset; see the module docstring for units."""

    name: str
    epoch: str                           # ISO 8601 of minute 0
    families: dict[str, ToolFamily]
    parts: dict[str, Part]
    routes: dict[str, list[RouteStep]]   # route name -> steps in order
    setup_times: dict[tuple[str, str], float]   # (current setup or "", new setup) -> minutes
    min_runs: dict[str, int]             # setup -> minimum run (lots)
    setup_groups: dict[str, list[str]]   # group -> setups
    pm_calendars: dict[str, PmCalendar]
    down_calendars: dict[str, DownCalendar]
    attachments: list[Attachment]
    orders: list[Order]
    wip: list[WipLot]
    transport: Transport
    transports: list[Transport] = []

    @property
    def tool_count(self) -> int:
        """Return the number of tools over all families."""
        return sum(f.count for f in self.families.values())

    def route_of(self, part: str) -> list[RouteStep]:
        """Return the steps of a part's route."""
        return self.routes[self.parts[part].route]


# --- helpers -----------------------------------------------------------------------------


def _minutes(value: str, unit: str, *, where: str) -> float:
    if value == "":
        return 0.0
    try:
        factor = _MINUTES[unit.strip().lower()]
    except KeyError:
        raise Smt2020Error(f"{where}: unknown time unit {unit!r}") from None
    return _float(value, where=where) * factor


def _float(value: str, *, where: str) -> float:
    if value == "":
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise Smt2020Error(f"{where}: {value!r} is not a number") from None


def _int(value: str, *, where: str) -> int:
    return round(_float(value, where=where))


def _read(path: Path, *, required: bool = True) -> list[dict[str, str]]:
    """Return the rows of one tab-separated file as dicts keyed by the header."""
    if not path.exists():
        if required:
            raise Smt2020Error(f"{path}: missing")
        return []
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split("\t")]
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        cells += [""] * (len(header) - len(cells))
        row = dict(zip(header, cells, strict=False))
        row["_where"] = f"{path.name}:{n}"
        rows.append(row)
    return rows


def _date(value: str, *, where: str) -> _dt.datetime:
    try:
        return _dt.datetime.strptime(value, DATE_FORMAT)
    except ValueError:
        raise Smt2020Error(f"{where}: date {value!r} is not {DATE_FORMAT}") from None


def _lot_type(lot: str) -> str:
    """Return the order's lot type of a WIP lot name: Init_Lot_3_2 -> Lot_3."""
    name = lot[5:] if lot.startswith("Init_") else lot
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() and head else name


# --- loader ------------------------------------------------------------------------------


def load(path: str | Path) -> Dataset:
    """Read one SMT2020 dataset folder and return it with every time in minutes."""
    root = Path(path)
    if not root.is_dir():
        raise Smt2020Error(f"{root}: not a dataset folder")
    tool_file = root / "tool.txt.1l"
    if not tool_file.exists():
        tool_file = root / "tool.txt"

    families: dict[str, ToolFamily] = {}
    for r in _read(tool_file):
        w = r["_where"]
        name = r.get("STNFAM", "")
        families[name] = ToolFamily(
            name=name, station=r.get("STN", ""), count=_int(r.get("STNQTY", "1") or "1", where=w),
            area=r.get("STNGRP", ""), rule=r.get("RULE", ""),
            ranking=tuple(x for x in r.get("FWLRANK", "").split(";") if x),
            wake_ranking=r.get("WAKERESRANK", ""), batch_criterion=r.get("BATCHCRITF", ""),
            batch_per=r.get("BATCHPER", ""),
            load_min=_minutes(r.get("LTIME", ""), r.get("LTUNITS", "min"), where=w),
            unload_min=_minutes(r.get("ULTIME", ""), r.get("ULTUNITS", "min"), where=w),
            capacity=_float(r.get("STNCAP", ""), where=w),
            action_list=r.get("STNFAMSTEP_ACTLIST", ""), location=r.get("STNFAMLOC", ""),
            prerule_rwl=r.get("PRERULERWL", ""), setup_group=r.get("SETUPGRP", ""),
        )

    parts: dict[str, Part] = {}
    routes: dict[str, list[RouteStep]] = {}
    for r in _read(root / "part.txt"):
        part = Part(name=r["PART"], route=r.get("ROUTE", ""), route_file=r.get("ROUTEFILE", ""),
                    part_group=r.get("PARTGRP", ""), part_family=r.get("PARTFAM", ""))
        parts[part.name] = part
        if part.route_file and part.route not in routes:
            for step_route, steps in _read_route(root / part.route_file).items():
                routes.setdefault(step_route, steps)
        if part.route not in routes:
            raise Smt2020Error(f"{r['_where']}: route {part.route!r} not found")
    for route, steps in routes.items():
        for s in steps:
            if s.family not in families:
                raise Smt2020Error(f"{route} step {s.step}: unknown tool family {s.family!r}")

    setup_times: dict[tuple[str, str], float] = {}
    for r in _read(root / "setup.txt", required=False):
        setup_times[(r.get("CURSETUP", ""), r["NEWSETUP"])] = _minutes(
            r.get("STIME", ""), r.get("STUNITS", "min"), where=r["_where"])

    min_runs: dict[str, int] = {}
    setup_groups: dict[str, list[str]] = {}
    group = ""
    for r in _read(root / "setupgrp.txt", required=False):
        group = r.get("SETUPGRP", "") or group   # a blank group continues the one above
        setup = r.get("SETUP", "")
        setup_groups.setdefault(group, []).append(setup)
        min_runs[setup] = _int(r.get("MINRUN", ""), where=r["_where"])

    pm_calendars: dict[str, PmCalendar] = {}
    for r in _read(root / "pmcal.txt", required=False):
        w = r["_where"]
        kind = r.get("PMCALTYPE", "")
        by_pieces = "piece" in kind or r.get("MTBPMUNITS", "").lower().startswith("piece")
        pm_calendars[r["PMCALNAME"]] = PmCalendar(
            name=r["PMCALNAME"], kind=kind,
            mtbpm_min=0.0 if by_pieces else _minutes(r.get("MTBPM", ""), r.get("MTBPMUNITS", ""), where=w),
            mtbpm_pieces=_float(r.get("MTBPM", ""), where=w) if by_pieces else 0.0,
            mttr_dist=r.get("MTTRDIST", "constant"),
            mttr_min=_minutes(r.get("MTTR", ""), r.get("MTTRUNITS", ""), where=w),
            mttr2_min=_minutes(r.get("MTTR2", ""), r.get("MTTRUNITS", ""), where=w),
            area=r.get("IGNORE", ""),
        )

    down_calendars: dict[str, DownCalendar] = {}
    for r in _read(root / "downcal.txt", required=False):
        w = r["_where"]
        down_calendars[r["DOWNCALNAME"]] = DownCalendar(
            name=r["DOWNCALNAME"], kind=r.get("DOWNCALTYPE", ""),
            mttf_dist=r.get("MTTFDIST", "exponential"),
            mttf_min=_minutes(r.get("MTTF", ""), r.get("MTTFUNITS", ""), where=w),
            mttr_dist=r.get("MTTRDIST", "exponential"),
            mttr_min=_minutes(r.get("MTTR", ""), r.get("MTTRUNITS", ""), where=w),
            area=r.get("IGNORE", ""),
        )

    attachments: list[Attachment] = []
    for r in _read(root / "attach.txt", required=False):
        w = r["_where"]
        cal = r["CALNAME"]
        pm = pm_calendars.get(cal)
        by_pieces = pm is not None and pm.mtbpm_pieces > 0 and not r.get("FOAUNITS", "")
        attachments.append(Attachment(
            calendar=cal, kind=r.get("CALTYPE", ""), res_type=r.get("RESTYPE", ""),
            res_name=r.get("RESNAME", ""), foa_dist=r.get("FOADIST", "constant"),
            foa_min=0.0 if by_pieces else _minutes(r.get("FOA", ""), r.get("FOAUNITS", ""), where=w),
            foa_pieces=_float(r.get("FOA", ""), where=w) if by_pieces else 0.0,
        ))

    transports = [
        Transport(from_loc=r.get("FROMLOC", ""), to_loc=r.get("TOLOC", ""),
                  dist=r.get("DDIST", "constant"),
                  time_min=_minutes(r.get("DTIME", ""), r.get("DUNITS", "min"), where=r["_where"]),
                  time2_min=_minutes(r.get("DTIME2", ""), r.get("DUNITS", "min"), where=r["_where"]))
        for r in _read(root / "fromto.txt", required=False)
    ]

    order_rows = _read(root / "order.txt")
    wip_rows = _read(root / "WIP.txt", required=False)
    starts = [_date(r["START"], where=r["_where"]) for r in order_rows + wip_rows]
    epoch = min(starts) if starts else _dt.datetime(2018, 1, 1)

    def since(d: _dt.datetime) -> float:
        return (d - epoch).total_seconds() / 60.0

    orders = []
    for r in order_rows:
        w = r["_where"]
        start = _date(r["START"], where=w)
        due = _date(r["DUE"], where=w) if r.get("DUE") else start
        orders.append(Order(
            lot_type=r["LOT"], part=r["PART"], priority=_int(r.get("PRIOR", "0"), where=w),
            pieces=_int(r.get("PIECES", "25"), where=w), start_min=since(start),
            release_dist=r.get("RDIST", "constant"),
            interval_min=_minutes(r.get("REPEAT", ""), r.get("RUNITS", "min"), where=w),
            count=_int(r.get("RPT#", "1") or "1", where=w),
            lots_per_release=_int(r.get("LOTSPERRPT", "1") or "1", where=w),
            due_offset_min=(due - start).total_seconds() / 60.0, due_min=since(due),
            order=r.get("ORDER", ""), hot=r.get("HOTLOT", "").lower() in ("yes", "y", "true", "1"),
        ))

    wip = []
    for r in wip_rows:
        w = r["_where"]
        wip.append(WipLot(
            lot=r["LOT"], part=r["PART"], priority=_int(r.get("PRIOR", "0"), where=w),
            pieces=_int(r.get("PIECES", "25"), where=w),
            start_min=since(_date(r["START"], where=w)),
            current_step=_int(r.get("CURSTEP", "1"), where=w),
            due_min=since(_date(r["DUE"], where=w)) if r.get("DUE") else 0.0,
            order=r.get("ORDER", ""),
            hot=r.get("HOTLOT", "").lower() in ("yes", "y", "true", "1"),
            lot_type=_lot_type(r["LOT"]),
        ))
        if r["PART"] not in parts:
            raise Smt2020Error(f"{w}: unknown part {r['PART']!r}")

    return Dataset(
        name=root.name, epoch=epoch.isoformat(), families=families, parts=parts, routes=routes,
        setup_times=setup_times, min_runs=min_runs, setup_groups=setup_groups,
        pm_calendars=pm_calendars, down_calendars=down_calendars, attachments=attachments,
        orders=orders, wip=wip, transport=transports[0] if transports else Transport(),
        transports=transports,
    )


def _read_route(path: Path) -> dict[str, list[RouteStep]]:
    """Return the steps of every route in one route file, in step order."""
    out: dict[str, list[RouteStep]] = {}
    for r in _read(path):
        w = r["_where"]
        unit = r.get("PTUNITS", "min")
        out.setdefault(r["ROUTE"], []).append(RouteStep(
            route=r["ROUTE"], step=_int(r["STEP"], where=w), desc=r.get("DESC", ""),
            family=r.get("STNFAM", ""), pdist=r.get("PDIST", "constant") or "constant",
            ptime_min=_minutes(r.get("PTIME", ""), unit, where=w),
            ptime2_min=_minutes(r.get("PTIME2", ""), unit, where=w),
            per=r.get("PTPER", "per_lot") or "per_lot",
            batch_min=_int(r.get("BATCHMN", ""), where=w),
            batch_max=_int(r.get("BATCHMX", ""), where=w),
            setup=r.get("SETUP", ""), setup_when=r.get("WHEN", ""),
            setup_time_min=_minutes(r.get("STIME", ""), r.get("STUNITS", "min"), where=w),
            same_tool=r.get("SVESTN", "").lower() in ("yes", "y"),
            same_tool_step=_int(r.get("FORSTEP", ""), where=w),
            batch_interval_min=_minutes(r.get("BatchInterval", ""), r.get("BatchIntUnits", "min"),
                                        where=w),
            part_interval_min=_minutes(r.get("PartInterval", ""), r.get("PartIntUnits", "min"),
                                       where=w),
            rework_step=_int(r.get("RWKSTEP", ""), where=w),
            rework_pct=_float(r.get("REWORK", ""), where=w), rework_type=r.get("RWKTYPE", ""),
            sample_pct=_float(r.get("StepPercent", ""), where=w) if r.get("StepPercent") else 100.0,
            cqt_to_step=_int(r.get("STEP_CQT", ""), where=w),
            cqt_min=_minutes(r.get("CQT", ""), r.get("CQTUNITS", "min"), where=w),
            area=r.get("IGNORE", ""),
        ))
    for steps in out.values():
        steps.sort(key=lambda s: s.step)
    return out
