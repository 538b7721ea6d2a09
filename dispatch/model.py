"""The fab model: products, routes, steps, tool groups, tools, qualifications and lots as arrays.

`FabModel` owns a struct of numpy arrays (CSR for tool -> qualified recipes)
and a Python API keyed by string ids: the builder (`add_route`, `add_tool`,
`add_lot`, ...) and the incremental updates the daemon calls as state changes
(`start_lot`, `complete_step`, `set_hold`, `set_tool_state`, `set_inhibit`,
`release_tool`). `FabModel.arrays()` returns the `FabArrays` named tuple of
those arrays that the numba scorer (and the fab simulation) read; the arrays
are shared, not copied, so an update is visible to the next scoring call.

Times are minutes since the model's epoch (`FabModel.epoch_s`, UTC seconds);
`FabModel.minutes(ts)` converts a UTC timestamp. Step indices are global (one
index space over every route); a route is a contiguous run of steps.

`from_smt2020(dataset)` builds the model from a parsed SMT2020 dataset
(`dispatch.smt2020.load`); `random_fab(seed)` builds a small random fab for
tests and benches.
"""

from __future__ import annotations

import enum
import math
import random
from typing import NamedTuple

import msgspec
import numpy as np

from dispatch.errors import ModelError, UnknownIdError
from equipment.events import E10State

__all__ = [
    "E10_CODE",
    "NO_QT",
    "FabArrays",
    "FabModel",
    "LotState",
    "PtimePer",
    "StepSpec",
    "from_smt2020",
    "random_fab",
]

NO_QT = math.inf  # lot_qt_deadline_min of a lot outside any queue-time window
NO_DUE_MIN = 1.0e12  # lot_due_min of a lot the ERP gave no due date (slack: on its pace)

# E10 state <-> int8 code in tool_e10 (the enum's declaration order).
E10_CODE: dict[E10State, int] = {s: i for i, s in enumerate(E10State)}
E10_FROM_CODE: dict[int, E10State] = {i: s for s, i in E10_CODE.items()}
E10_PRODUCTIVE = E10_CODE[E10State.PRODUCTIVE]
E10_STANDBY = E10_CODE[E10State.STANDBY]


class LotState(enum.IntEnum):
    """Where a lot slot is in its life (lot_state codes)."""

    WAITING = 0   # queued at lot_step, may be dispatched
    RUNNING = 1   # tracked in on lot_tool
    DONE = 2      # left the line (route finished or removed)
    FREE = 3      # unused slot


class PtimePer(enum.IntEnum):
    """What step_ptime_min is counted per (step_ptime_per codes)."""

    LOT = 0
    WAFER = 1
    BATCH = 2


_PER_NAMES = {"lot": PtimePer.LOT, "per_lot": PtimePer.LOT, "wafer": PtimePer.WAFER,
              "per_piece": PtimePer.WAFER, "piece": PtimePer.WAFER,
              "batch": PtimePer.BATCH, "per_batch": PtimePer.BATCH}


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One route step as the builder takes it; positions are 1-based within the route."""

    group: str                         # tool group that runs the step
    recipe: str                        # recipe (ppid) id; created on first use
    recipe_version: int = 1            # approved version of the recipe
    ptime_min: float = 1.0             # process time, counted per `per`
    per: str = "lot"                   # "lot" | "wafer" | "batch" (SMT2020 names accepted)
    batch_min_wafers: int = 0          # batch tools: smallest batch that may start (0: no batching)
    batch_max_wafers: int = 0          # batch tools: largest batch
    setup: str = ""                    # setup the tool needs for this step, "" if none
    setup_time_min: float = 0.0        # setup time for this step; 0: from the setup-change table
    qt_to_step: int = 0                # queue-time limit from the end of this step to the start
    qt_limit_min: float = 0.0          #   of step `qt_to_step` (position in this route), 0 = none
    rework_route: str = ""             # route a non-conforming lot takes, "" if none
    rework_return_step: int = 0        # position in this route to come back to, 0 = next step
    rework_pct: float = 0.0            # expected share of lots reworked (for simulation)
    sample_pct: float = 100.0          # share of lots that do this step (measurement sampling)


class FabArrays(NamedTuple):
    """The arrays the numba scorer reads; see FabModel for each field's meaning."""

    step_group: np.ndarray           # int32[S]
    step_recipe: np.ndarray          # int32[S]
    step_next: np.ndarray            # int32[S], next step of the same route, -1 at its end
    step_ptime_min: np.ndarray       # float64[S]
    step_ptime_per: np.ndarray       # int8[S], PtimePer
    step_batch_min: np.ndarray       # int32[S], wafers, 0 = not a batch step
    step_batch_max: np.ndarray       # int32[S], wafers
    step_setup: np.ndarray           # int32[S], -1 = none
    step_setup_time_min: np.ndarray  # float64[S], 0 = from setup_change_min
    step_qt_to: np.ndarray           # int32[S], global step index, -1 = no limit
    step_qt_limit_min: np.ndarray    # float64[S]
    step_rpt_min: np.ndarray         # float64[S], remaining process time of a standard lot to route end
    setup_change_min: np.ndarray     # float64[NS+1, NS], row cur+1 (row 0: from no setup), NaN = not given
    setup_min_runs: np.ndarray       # int32[NS]
    tool_group: np.ndarray           # int32[T]
    tool_e10: np.ndarray             # int8[T], E10_CODE
    tool_setup: np.ndarray           # int32[T], -1 = none
    tool_setup_runs: np.ndarray      # int32[T], lots run since the current setup was made
    tool_busy_until_min: np.ndarray  # float64[T]
    tool_inhibited: np.ndarray       # bool[T]
    qual_ptr: np.ndarray             # int64[T+1], CSR into qual_recipe
    qual_recipe: np.ndarray          # int32[Q], sorted within each tool
    tool_qual_hash: np.ndarray       # int64[T], hash of the tool's qualification row
    lot_state: np.ndarray            # int8[L], LotState
    lot_step: np.ndarray             # int32[L], -1 when not in the line
    lot_hold: np.ndarray             # bool[L]
    lot_priority: np.ndarray         # int32[L]
    lot_hot: np.ndarray              # int8[L], hot-lot class: 0 normal, 1 hot, 2 super hot
    lot_wafers: np.ndarray           # int32[L]
    lot_due_min: np.ndarray          # float64[L]
    lot_arrival_min: np.ndarray      # float64[L], when the lot arrived at lot_step
    lot_qt_deadline_min: np.ndarray  # float64[L], start lot_qt_step before this, NO_QT if none
    lot_qt_step: np.ndarray          # int32[L], -1 if none


_STEP_FIELDS = {
    "step_group": np.int32, "step_recipe": np.int32, "step_next": np.int32,
    "step_ptime_min": np.float64, "step_ptime_per": np.int8, "step_batch_min": np.int32,
    "step_batch_max": np.int32, "step_setup": np.int32, "step_setup_time_min": np.float64,
    "step_qt_to": np.int32, "step_qt_limit_min": np.float64, "step_rpt_min": np.float64,
    "step_route": np.int32, "step_pos": np.int32, "step_rework_route": np.int32,
    "step_rework_return": np.int32, "step_rework_pct": np.float64, "step_sample_pct": np.float64,
    "step_recipe_version": np.int32,
}
_TOOL_FIELDS = {
    "tool_group": (np.int32, 0), "tool_e10": (np.int8, E10_STANDBY), "tool_setup": (np.int32, -1),
    "tool_setup_runs": (np.int32, 0), "tool_busy_until_min": (np.float64, 0.0),
    "tool_inhibited": (np.bool_, False),
}
_LOT_FIELDS = {
    "lot_state": (np.int8, int(LotState.FREE)), "lot_step": (np.int32, -1),
    "lot_hold": (np.bool_, False), "lot_priority": (np.int32, 0), "lot_hot": (np.int8, 0),
    "lot_wafers": (np.int32, 0), "lot_due_min": (np.float64, 0.0),
    "lot_arrival_min": (np.float64, 0.0), "lot_qt_deadline_min": (np.float64, NO_QT),
    "lot_qt_step": (np.int32, -1), "lot_product": (np.int32, -1), "lot_tool": (np.int32, -1),
    "lot_return_step": (np.int32, -1),
}
STANDARD_LOT_WAFERS = 25


def _ptime_for(per: int, ptime: float, wafers: int, batch_max: int) -> float:
    """Return the minutes one lot of `wafers` occupies a tool at a step (a batch share for batches)."""
    if per == PtimePer.WAFER:
        return ptime * wafers
    if per == PtimePer.BATCH and batch_max > 0:
        return ptime * wafers / batch_max
    return ptime


class FabModel:
    """The fab as arrays plus string-id maps; the daemon core is its only writer."""

    def __init__(self, epoch_s: float = 0.0) -> None:
        self.epoch_s = epoch_s
        self.group_ids: list[str] = []
        self.group_index: dict[str, int] = {}
        self.recipe_ids: list[str] = []
        self.recipe_index: dict[str, int] = {}
        self.recipe_version: list[int] = []            # approved version per recipe
        self.recipe_checksum: list[str] = []           # approved body sha256 hex, "" unknown
        # every approved version's body: (recipe, version) -> sha256 hex; a route step names
        # its version, which need not be the newest (an engineering change in progress)
        self.recipe_bodies: dict[tuple[int, int], str] = {}
        self._body_versions: dict[tuple[int, str], int] = {}   # (recipe, sha256) -> newest version
        self.setup_ids: list[str] = []
        self.setup_index: dict[str, int] = {}
        self._setup_min_runs: list[int] = []
        self._setup_times: dict[tuple[int, int], float] = {}   # (cur or -1, new) -> minutes
        self.route_ids: list[str] = []
        self.route_index: dict[str, int] = {}
        self.route_first: list[int] = []               # global index of each route's first step
        self.route_len: list[int] = []
        self._route_specs: list[list[StepSpec]] = []
        self.product_ids: list[str] = []
        self.product_index: dict[str, int] = {}
        self.product_route: list[int] = []
        self.tool_ids: list[str] = []
        self.tool_index: dict[str, int] = {}
        self._tool_quals: list[list[int]] = []
        self.lot_ids: list[str] = []                    # "" for a free slot
        self.lot_index: dict[str, int] = {}
        self._free_lots: list[int] = []
        # tool x recipe: what the tool last reported (RecipeReport): (checksum, version)
        self.tool_recipe_report: dict[tuple[int, int], tuple[str, int]] = {}
        self.hold_reason: dict[int, str] = {}
        self._steps: dict[str, np.ndarray] = {k: np.zeros(0, t) for k, t in _STEP_FIELDS.items()}
        self._tools: dict[str, np.ndarray] = {k: np.zeros(0, t) for k, (t, _) in _TOOL_FIELDS.items()}
        self._lots: dict[str, np.ndarray] = {k: np.full(0, d, t) for k, (t, d) in _LOT_FIELDS.items()}
        self._setup_change = np.zeros((1, 0))
        self._qual_ptr = np.zeros(1, np.int64)
        self._qual_recipe = np.zeros(0, np.int32)
        self._qual_hash = np.zeros(0, np.int64)
        self._arrays: FabArrays | None = None
        self._steps_dirty = False
        self._quals_dirty = False

    # --- sizes and time --------------------------------------------------------------

    @property
    def n_steps(self) -> int:
        return len(self._steps["step_group"])

    @property
    def n_tools(self) -> int:
        return len(self.tool_ids)

    @property
    def n_groups(self) -> int:
        return len(self.group_ids)

    @property
    def n_lot_slots(self) -> int:
        return len(self._lots["lot_state"])

    @property
    def n_lots(self) -> int:
        """Return the number of lots in the line (waiting or running)."""
        st = self._lots["lot_state"][: len(self.lot_ids)]
        return int(np.count_nonzero(st <= LotState.RUNNING))

    def minutes(self, ts_s: float) -> float:
        """Return a UTC timestamp (seconds) as model minutes."""
        return (ts_s - self.epoch_s) / 60.0

    def __getattr__(self, name: str) -> np.ndarray:
        # step_*/tool_*/lot_* arrays read as attributes (model.lot_step[i])
        d = self.__dict__
        for table in ("_steps", "_tools", "_lots"):
            arrs = d.get(table)
            if arrs is not None and name in arrs:
                return arrs[name]
        raise AttributeError(name)

    # --- builder ---------------------------------------------------------------------

    def add_tool_group(self, name: str) -> int:
        """Add a tool group (or return the existing one's index)."""
        if name in self.group_index:
            return self.group_index[name]
        self.group_index[name] = len(self.group_ids)
        self.group_ids.append(name)
        self._arrays = None
        return self.group_index[name]

    def add_recipe(self, name: str, version: int = 1, checksum: str = "") -> int:
        """Add a recipe with its approved version and body checksum (or update them)."""
        if name in self.recipe_index:
            r = self.recipe_index[name]
            self.recipe_version[r] = version
            if checksum:
                self.recipe_checksum[r] = checksum
        else:
            r = len(self.recipe_ids)
            self.recipe_index[name] = r
            self.recipe_ids.append(name)
            self.recipe_version.append(version)
            self.recipe_checksum.append(checksum)
        if checksum:
            self._record_body(r, version, checksum)
        return r

    def _record_body(self, r: int, version: int, checksum: str) -> None:
        self.recipe_bodies[(r, version)] = checksum
        key = (r, checksum)
        self._body_versions[key] = max(version, self._body_versions.get(key, 0))

    def approve_recipe(self, name: str, version: int, checksum: str) -> None:
        """Record a newly approved recipe version and body checksum (engineering change)."""
        r = self._index(self.recipe_index, name, "recipe")
        self.recipe_version[r] = version
        self.recipe_checksum[r] = checksum
        self._record_body(r, version, checksum)
        for s in np.flatnonzero(self._steps["step_recipe"] == r):
            self._steps["step_recipe_version"][s] = version

    def add_setup(self, name: str, min_runs: int = 0) -> int:
        """Add a tool setup (e.g. an implant gas) with its minimum run length in lots."""
        if name in self.setup_index:
            s = self.setup_index[name]
            self._setup_min_runs[s] = max(self._setup_min_runs[s], min_runs)
        else:
            self.setup_index[name] = len(self.setup_ids)
            self.setup_ids.append(name)
            self._setup_min_runs.append(min_runs)
        self._steps_dirty = True
        return self.setup_index[name]

    def set_setup_time(self, current: str, new: str, minutes: float) -> None:
        """Set the time to change a tool from `current` ("" = any/none) to `new` setup."""
        cur = self.add_setup(current) if current else -1
        self._setup_times[(cur, self.add_setup(new))] = float(minutes)
        self._steps_dirty = True

    def add_route(self, name: str, steps: list[StepSpec]) -> int:
        """Add a route of ordered steps; groups, recipes and setups are created on first use."""
        if name in self.route_index:
            raise ModelError(f"route {name!r} already exists")
        if not steps:
            raise ModelError(f"route {name!r} has no steps")
        r = len(self.route_ids)
        first = self.n_steps
        n = len(steps)
        cols: dict[str, list] = {k: [] for k in _STEP_FIELDS}
        for pos, sp in enumerate(steps, start=1):
            where = f"route {name!r} step {pos}"
            if sp.per not in _PER_NAMES:
                raise ModelError(f"{where}: per must be lot, wafer or batch, not {sp.per!r}")
            if sp.qt_to_step and not (pos < sp.qt_to_step <= n):
                raise ModelError(f"{where}: qt_to_step {sp.qt_to_step} is not a later step")
            if sp.rework_return_step and not (1 <= sp.rework_return_step <= n):
                raise ModelError(f"{where}: rework_return_step {sp.rework_return_step} out of range")
            if sp.batch_max_wafers < sp.batch_min_wafers:
                raise ModelError(f"{where}: batch_max_wafers < batch_min_wafers")
            cols["step_group"].append(self.add_tool_group(sp.group))
            rec = self.recipe_index.get(sp.recipe)
            if rec is None:
                rec = self.add_recipe(sp.recipe, sp.recipe_version)
            cols["step_recipe"].append(rec)
            cols["step_recipe_version"].append(sp.recipe_version)
            cols["step_next"].append(first + pos if pos < n else -1)
            cols["step_ptime_min"].append(sp.ptime_min)
            cols["step_ptime_per"].append(int(_PER_NAMES[sp.per]))
            cols["step_batch_min"].append(sp.batch_min_wafers)
            cols["step_batch_max"].append(sp.batch_max_wafers)
            cols["step_setup"].append(self.add_setup(sp.setup) if sp.setup else -1)
            cols["step_setup_time_min"].append(sp.setup_time_min)
            has_qt = sp.qt_to_step > 0 and sp.qt_limit_min > 0
            cols["step_qt_to"].append(first + sp.qt_to_step - 1 if has_qt else -1)
            cols["step_qt_limit_min"].append(sp.qt_limit_min if has_qt else 0.0)
            cols["step_rpt_min"].append(0.0)
            cols["step_route"].append(r)
            cols["step_pos"].append(pos)
            cols["step_rework_route"].append(-1)   # resolved in _resolve_rework
            ret = sp.rework_return_step or (pos + 1 if pos < n else 0)
            cols["step_rework_return"].append(first + ret - 1 if ret else -1)
            cols["step_rework_pct"].append(sp.rework_pct)
            cols["step_sample_pct"].append(sp.sample_pct)
        for k, t in _STEP_FIELDS.items():
            self._steps[k] = np.concatenate([self._steps[k], np.asarray(cols[k], dtype=t)])
        # remaining process time of a standard lot, from each step to the end of the route
        rpt = 0.0
        for i in range(first + n - 1, first - 1, -1):
            rpt += _ptime_for(int(self._steps["step_ptime_per"][i]),
                              float(self._steps["step_ptime_min"][i]), STANDARD_LOT_WAFERS,
                              int(self._steps["step_batch_max"][i]))
            self._steps["step_rpt_min"][i] = rpt
        self.route_index[name] = r
        self.route_ids.append(name)
        self.route_first.append(first)
        self.route_len.append(n)
        self._route_specs.append(list(steps))
        self._resolve_rework()
        self._steps_dirty = True
        self._arrays = None
        return r

    def _resolve_rework(self) -> None:
        for r, specs in enumerate(self._route_specs):
            for pos, sp in enumerate(specs):
                if sp.rework_route and sp.rework_route in self.route_index:
                    self._steps["step_rework_route"][self.route_first[r] + pos] = (
                        self.route_index[sp.rework_route])

    def add_product(self, name: str, route: str) -> int:
        """Add a product that follows `route`."""
        if name in self.product_index:
            raise ModelError(f"product {name!r} already exists")
        r = self._index(self.route_index, route, "route")
        self.product_index[name] = len(self.product_ids)
        self.product_ids.append(name)
        self.product_route.append(r)
        return self.product_index[name]

    def add_tool(self, name: str, group: str, recipes: list[str] | None = None, *,
                 setup: str = "", state: E10State = E10State.STANDBY) -> int:
        """Add a tool; `recipes=None` qualifies it for every recipe its group's steps use."""
        if name in self.tool_index:
            raise ModelError(f"tool {name!r} already exists")
        g = self.add_tool_group(group)
        if recipes is None:
            quals = sorted({int(x) for x in self._steps["step_recipe"][self._steps["step_group"] == g]})
        else:
            quals = sorted({self._index(self.recipe_index, x, "recipe") for x in recipes})
        t = len(self.tool_ids)
        self.tool_index[name] = t
        self.tool_ids.append(name)
        self._tool_quals.append(quals)
        for k, (tp, default) in _TOOL_FIELDS.items():
            self._tools[k] = np.append(self._tools[k], np.asarray([default], dtype=tp))
        self._tools["tool_group"][t] = g
        self._tools["tool_e10"][t] = E10_CODE[E10State(state)]
        self._tools["tool_setup"][t] = self.add_setup(setup) if setup else -1
        self._quals_dirty = True
        self._arrays = None
        return t

    def approved_body(self, recipe: int, version: int) -> str:
        """Return the approved body checksum of recipe index `recipe` at `version` ("" none)."""
        return self.recipe_bodies.get((recipe, version), "")

    def body_version(self, recipe: int, checksum: str) -> int:
        """Return the approved version whose body is `checksum` (0 when none is)."""
        return self._body_versions.get((recipe, checksum), 0)

    def set_qualified(self, tool: str, recipes: list[str]) -> None:
        """Set exactly which recipes a tool is qualified for (revoked ones are dropped)."""
        t = self._index(self.tool_index, tool, "tool")
        want = sorted({self._index(self.recipe_index, x, "recipe") for x in recipes})
        if want != self._tool_quals[t]:
            self._tool_quals[t] = want
            self._quals_dirty = True

    def qualify(self, tool: str, recipes: list[str], *, qualified: bool = True) -> None:
        """Add (or remove) recipe qualifications of a tool."""
        t = self._index(self.tool_index, tool, "tool")
        rs = {self._index(self.recipe_index, x, "recipe") for x in recipes}
        cur = set(self._tool_quals[t])
        self._tool_quals[t] = sorted(cur | rs if qualified else cur - rs)
        self._quals_dirty = True

    def add_lot(self, name: str, product: str, *, step: int = 1, wafers: int = 25,
                priority: int = 10, hot: int = 0, due_min: float = 0.0,
                arrival_min: float = 0.0, hold: bool = False) -> int:
        """Add a lot waiting at route position `step` (1-based) of its product's route."""
        if name in self.lot_index:
            raise ModelError(f"lot {name!r} already exists")
        p = self._index(self.product_index, product, "product")
        r = self.product_route[p]
        if not 1 <= step <= self.route_len[r]:
            raise ModelError(f"lot {name!r}: step {step} not in route {self.route_ids[r]!r}")
        if self._free_lots:
            i = self._free_lots.pop()
            self.lot_ids[i] = name
        else:
            i = len(self.lot_ids)
            self.lot_ids.append(name)
            if i >= self.n_lot_slots:
                self._grow_lots(max(64, 2 * self.n_lot_slots))
        self.lot_index[name] = i
        L = self._lots
        for k, (_, default) in _LOT_FIELDS.items():
            L[k][i] = default
        L["lot_state"][i] = LotState.WAITING
        L["lot_step"][i] = self.route_first[r] + step - 1
        L["lot_hold"][i] = hold
        L["lot_priority"][i] = priority
        L["lot_hot"][i] = hot
        L["lot_wafers"][i] = wafers
        L["lot_due_min"][i] = due_min
        L["lot_arrival_min"][i] = arrival_min
        L["lot_product"][i] = p
        return i

    def remove_lot(self, lot: str) -> None:
        """Take a lot out of the line (shipped, scrapped) and free its slot."""
        i = self._index(self.lot_index, lot, "lot")
        del self.lot_index[lot]
        self.lot_ids[i] = ""
        self.hold_reason.pop(i, None)
        self._lots["lot_state"][i] = LotState.FREE
        self._lots["lot_step"][i] = -1
        self._free_lots.append(i)

    def _grow_lots(self, capacity: int) -> None:
        for k, (tp, default) in _LOT_FIELDS.items():
            old = self._lots[k]
            new = np.full(capacity, default, dtype=tp)
            new[: len(old)] = old
            self._lots[k] = new
        self._arrays = None

    # --- incremental state updates (the daemon core calls these) ---------------------

    def lot(self, lot: str) -> int:
        """Return a lot's index."""
        return self._index(self.lot_index, lot, "lot")

    def tool(self, tool: str) -> int:
        """Return a tool's index."""
        return self._index(self.tool_index, tool, "tool")

    def set_hold(self, lot: str, hold: bool, reason: str = "") -> None:
        """Put a lot on hold (with a reason) or release it."""
        i = self.lot(lot)
        self._lots["lot_hold"][i] = hold
        if hold:
            self.hold_reason[i] = reason
        else:
            self.hold_reason.pop(i, None)

    def set_priority(self, lot: str, priority: int, hot: int | None = None) -> None:
        """Change a lot's priority (and hot-lot class)."""
        i = self.lot(lot)
        self._lots["lot_priority"][i] = priority
        if hot is not None:
            self._lots["lot_hot"][i] = hot

    def set_queue_time(self, lot: str, deadline_min: float | None, *, until_step: int = -1) -> None:
        """Open a lot's queue-time window (start global step `until_step`, default its current one,
        before `deadline_min`) or close it (deadline None)."""
        i = self.lot(lot)
        if deadline_min is None:
            self._lots["lot_qt_deadline_min"][i] = NO_QT
            self._lots["lot_qt_step"][i] = -1
            return
        self._lots["lot_qt_deadline_min"][i] = deadline_min
        self._lots["lot_qt_step"][i] = until_step if until_step >= 0 else int(self._lots["lot_step"][i])

    def set_tool_state(self, tool: str, state: E10State) -> None:
        """Record a tool's E10 state."""
        self._tools["tool_e10"][self.tool(tool)] = E10_CODE[E10State(state)]

    def set_inhibit(self, tool: str, inhibited: bool) -> None:
        """Inhibit a tool (SPC reaction, engineering) or lift the inhibit."""
        self._tools["tool_inhibited"][self.tool(tool)] = inhibited

    def set_tool_setup(self, tool: str, setup: str) -> None:
        """Record a tool's current setup ("" = none); resets its run count."""
        t = self.tool(tool)
        self._tools["tool_setup"][t] = self.add_setup(setup) if setup else -1
        self._tools["tool_setup_runs"][t] = 0
        self._sync_setups()

    def record_tool_recipe(self, tool: str, recipe: str, checksum: str, version: int = 0) -> None:
        """Record what a tool reported about a recipe body (RecipeReport: sha256 hex)."""
        t = self.tool(tool)
        r = self._index(self.recipe_index, recipe, "recipe")
        self.tool_recipe_report[(t, r)] = (checksum, version)

    def lot_ptime_min(self, i: int) -> float:
        """Return the minutes lot slot `i` occupies a tool at its current step."""
        s = int(self._lots["lot_step"][i])
        S = self._steps
        return _ptime_for(int(S["step_ptime_per"][s]), float(S["step_ptime_min"][s]),
                          int(self._lots["lot_wafers"][i]), int(S["step_batch_max"][s]))

    def start_lot(self, lot: str, tool: str, now_min: float, duration_min: float | None = None,
                  *, overlap: bool = False, again: bool = False) -> None:
        """Track a lot in on a tool: the lot runs, the tool is busy and takes the step's setup.

        The tool is busy for the lot's process time after what it runs already (a simulated
        start). overlap: the lot started at now_min alongside what the tool runs (a batch,
        a multi-chamber tool: the daemon's record), so the tool is busy until the later of
        the two ends. again: the lot ran there already (the model re-added it from the
        record), so the tool's setup is not counted twice.
        """
        i, t = self.lot(lot), self.tool(tool)
        L, T, S = self._lots, self._tools, self._steps
        s = int(L["lot_step"][i])
        L["lot_state"][i] = LotState.RUNNING
        L["lot_tool"][i] = t
        if int(L["lot_qt_step"][i]) == s:   # reached the end of its queue-time window
            L["lot_qt_step"][i] = -1
            L["lot_qt_deadline_min"][i] = NO_QT
        need = int(S["step_setup"][s])
        if need >= 0 and not again:
            if int(T["tool_setup"][t]) != need:
                T["tool_setup"][t] = need
                T["tool_setup_runs"][t] = 0
            T["tool_setup_runs"][t] += 1
        dur = self.lot_ptime_min(i) if duration_min is None else duration_min
        busy = float(T["tool_busy_until_min"][t])
        T["tool_busy_until_min"][t] = max(busy, now_min + dur) if overlap else \
            max(busy, now_min) + dur
        T["tool_e10"][t] = E10_PRODUCTIVE

    def running_tool(self, lot: str) -> str | None:
        """The tool a lot runs on in the model (None: it does not run, or is not here)."""
        i = self.lot_index.get(lot)
        if i is None or int(self._lots["lot_state"][i]) != LotState.RUNNING:
            return None
        return self.tool_ids[int(self._lots["lot_tool"][i])]

    def release_tool(self, tool: str, now_min: float) -> None:
        """Mark a tool idle (standby) from now, after its lots are done."""
        t = self.tool(tool)
        self._tools["tool_busy_until_min"][t] = now_min
        if int(self._tools["tool_e10"][t]) == E10_PRODUCTIVE:
            self._tools["tool_e10"][t] = E10_STANDBY

    def complete_step(self, lot: str, now_min: float, ok: bool = True) -> int:
        """Move a lot past its step; a non-conforming lot (ok=False) goes to the step's rework route.

        Returns the lot's new global step index, or -1 when the lot left the line
        (its route is finished). A lot on a rework route comes back to the main
        route at the step's rework return position after the rework route's last step.
        """
        i = self.lot(lot)
        L, S = self._lots, self._steps
        s = int(L["lot_step"][i])
        rw = int(S["step_rework_route"][s])
        if not ok and rw >= 0:
            nxt = self.route_first[rw]
            L["lot_return_step"][i] = int(S["step_rework_return"][s])
        else:
            nxt = int(S["step_next"][s])
            if nxt < 0 and int(L["lot_return_step"][i]) >= 0:
                nxt = int(L["lot_return_step"][i])
                L["lot_return_step"][i] = -1
        if int(S["step_qt_to"][s]) >= 0 and ok:
            L["lot_qt_step"][i] = int(S["step_qt_to"][s])
            L["lot_qt_deadline_min"][i] = now_min + float(S["step_qt_limit_min"][s])
        L["lot_tool"][i] = -1
        L["lot_arrival_min"][i] = now_min
        if nxt < 0:
            L["lot_state"][i] = LotState.DONE
            L["lot_step"][i] = -1
            return -1
        L["lot_state"][i] = LotState.WAITING
        L["lot_step"][i] = nxt
        return nxt

    def move_lot(self, lot: str, route: str, step: int, now_min: float) -> int:
        """Put a lot at a route position (an engineer's manual move); returns the global step."""
        i = self.lot(lot)
        r = self._index(self.route_index, route, "route")
        if not 1 <= step <= self.route_len[r]:
            raise ModelError(f"lot {lot!r}: step {step} not in route {route!r}")
        s = self.route_first[r] + step - 1
        self._lots["lot_step"][i] = s
        self._lots["lot_state"][i] = LotState.WAITING
        self._lots["lot_arrival_min"][i] = now_min
        self._lots["lot_tool"][i] = -1
        return s

    # --- views -----------------------------------------------------------------------

    def step_name(self, s: int) -> str:
        """Return "route:position" of a global step index."""
        return f"{self.route_ids[int(self._steps['step_route'][s])]}:{int(self._steps['step_pos'][s])}"

    def step_of(self, route: str, position: int) -> int:
        """Return the global step index of a route position (1-based)."""
        r = self._index(self.route_index, route, "route")
        if not 1 <= position <= self.route_len[r]:
            raise UnknownIdError(f"step {position} not in route {route!r}")
        return self.route_first[r] + position - 1

    def _sync_setups(self) -> None:
        ns = len(self.setup_ids)
        m = np.full((ns + 1, ns), np.nan)
        for (cur, new), minutes in self._setup_times.items():
            m[cur + 1, new] = minutes
        self._setup_change = m
        self._setup_min_runs_arr = np.asarray(self._setup_min_runs, dtype=np.int32)
        self._steps_dirty = False
        self._arrays = None

    def _sync_quals(self) -> None:
        self._qual_ptr, self._qual_recipe, self._qual_hash = qual_arrays(self._tool_quals)
        self._quals_dirty = False
        self._arrays = None

    def qualified(self, t: int, recipe: int) -> bool:
        """Return whether tool index t is qualified for recipe index `recipe`."""
        return recipe in self._tool_quals[t]

    def arrays(self) -> FabArrays:
        """Return the kernel's view of the model (shared arrays; rebuilt only on structural change)."""
        if self._steps_dirty or not hasattr(self, "_setup_min_runs_arr"):
            self._sync_setups()
        if self._quals_dirty:
            self._sync_quals()
        if self._arrays is None:
            S, T, L = self._steps, self._tools, self._lots
            self._arrays = FabArrays(
                step_group=S["step_group"], step_recipe=S["step_recipe"], step_next=S["step_next"],
                step_ptime_min=S["step_ptime_min"], step_ptime_per=S["step_ptime_per"],
                step_batch_min=S["step_batch_min"], step_batch_max=S["step_batch_max"],
                step_setup=S["step_setup"], step_setup_time_min=S["step_setup_time_min"],
                step_qt_to=S["step_qt_to"], step_qt_limit_min=S["step_qt_limit_min"],
                step_rpt_min=S["step_rpt_min"],
                setup_change_min=self._setup_change, setup_min_runs=self._setup_min_runs_arr,
                tool_group=T["tool_group"], tool_e10=T["tool_e10"], tool_setup=T["tool_setup"],
                tool_setup_runs=T["tool_setup_runs"], tool_busy_until_min=T["tool_busy_until_min"],
                tool_inhibited=T["tool_inhibited"], qual_ptr=self._qual_ptr,
                qual_recipe=self._qual_recipe, tool_qual_hash=self._qual_hash,
                lot_state=L["lot_state"], lot_step=L["lot_step"], lot_hold=L["lot_hold"],
                lot_priority=L["lot_priority"], lot_hot=L["lot_hot"], lot_wafers=L["lot_wafers"],
                lot_due_min=L["lot_due_min"], lot_arrival_min=L["lot_arrival_min"],
                lot_qt_deadline_min=L["lot_qt_deadline_min"], lot_qt_step=L["lot_qt_step"],
            )
        return self._arrays

    @staticmethod
    def _index(table: dict[str, int], key: str, what: str) -> int:
        try:
            return table[key]
        except KeyError:
            raise UnknownIdError(f"unknown {what} {key!r}") from None


# --- SMT2020 ------------------------------------------------------------------------------


def qual_arrays(quals: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's view of tool qualifications: (ptr, recipes, hash per tool); tool t may run
    recipes[ptr[t]:ptr[t + 1]], and tools with equal hashes run the same recipes."""
    ptr = np.zeros(len(quals) + 1, np.int64)
    ptr[1:] = np.cumsum([len(q) for q in quals])
    recipes = np.asarray([r for q in quals for r in q], dtype=np.int32)
    return ptr, recipes, np.asarray([hash(tuple(q)) for q in quals], dtype=np.int64)


def _hot_class(priority: int, hot_flag: bool) -> int:
    """Return SMT2020's hot-lot class: priority 30 super hot (2), 20 or HOTLOT=yes hot (1)."""
    if priority >= 30:
        return 2
    return 1 if priority >= 20 or hot_flag else 0


def from_smt2020(dataset, *, scale: int = 1) -> FabModel:
    """Build the model from a parsed SMT2020 dataset (`dispatch.smt2020.load`).

    Tool groups are the tool families, each with STNQTY tools named
    "FAMILY#n"; a recipe is "route/DESC" (one per route step, so batches form
    per route step as SMT2020's crit_sameroutestep asks); a step with a rework
    loop (RWKSTEP) gets a rework route that repeats the steps from RWKSTEP to it
    and comes back to the next step. The initial WIP lots wait at their CURSTEP
    from minute 0. `scale` multiplies every family's tool count and the WIP
    (lots "NAME~k"): the same fab, `scale` times bigger.
    """
    m = FabModel()
    for setup, runs in dataset.min_runs.items():
        m.add_setup(setup, runs)
    for (cur, new), minutes in dataset.setup_times.items():
        m.set_setup_time(cur, new, minutes)
    for name in dataset.families:
        m.add_tool_group(name)
    for route, steps in dataset.routes.items():
        specs = []
        pos_of = {st.step: k for k, st in enumerate(steps, start=1)}
        for st in steps:
            specs.append(StepSpec(
                group=st.family, recipe=f"{route}/{st.desc}", ptime_min=st.ptime_min,
                per=st.per, batch_min_wafers=st.batch_min, batch_max_wafers=st.batch_max,
                setup=st.setup, setup_time_min=st.setup_time_min,
                qt_to_step=pos_of.get(st.cqt_to_step, 0) if st.cqt_min > 0 else 0,
                qt_limit_min=st.cqt_min,
                rework_route=f"{route}/rework@{st.step}" if st.rework_step else "",
                rework_pct=st.rework_pct, sample_pct=st.sample_pct,
            ))
        m.add_route(route, specs)
        for st in steps:
            if st.rework_step and st.rework_step in pos_of:
                lo, hi = pos_of[st.rework_step], pos_of[st.step]
                loop = [msgspec.structs.replace(specs[k - 1], qt_to_step=0, qt_limit_min=0.0,
                                                rework_route="")
                        for k in range(lo, hi + 1)]
                m.add_route(f"{route}/rework@{st.step}", loop)
    for part in dataset.parts.values():
        m.add_product(part.name, part.route)
    for name, fam in dataset.families.items():
        for k in range(fam.count * scale):
            m.add_tool(f"{name}#{k + 1}", name)
    positions = {route: {st.step: k for k, st in enumerate(steps, start=1)}
                 for route, steps in dataset.routes.items()}
    for copy in range(scale):
        for w in dataset.wip:
            route = m.route_ids[m.product_route[m.product_index[w.part]]]
            pos = positions[route].get(w.current_step)
            if pos is None:
                raise ModelError(f"WIP lot {w.lot!r}: step {w.current_step} not in route {route!r}")
            m.add_lot(w.lot if copy == 0 else f"{w.lot}~{copy}", w.part, step=pos,
                      wafers=w.pieces, priority=w.priority, hot=_hot_class(w.priority, w.hot),
                      due_min=w.due_min, arrival_min=w.start_min)
    m.arrays()
    return m


# --- random fabs for tests and benches -----------------------------------------------------


def random_fab(seed: int, *, n_groups: int = 6, tools_per_group: tuple[int, int] = (1, 4),
               n_routes: int = 2, route_len: tuple[int, int] = (4, 12), n_lots: int = 40,
               now_min: float = 0.0) -> FabModel:
    """Build a small random fab with every feature in use (setups, batches, queue times, holds).

    The same seed gives the same fab. Tools get random E10 states, setups,
    busy times, inhibits and partial qualifications; lots random steps,
    priorities, due dates, arrival times, holds and open queue-time windows.
    """
    rnd = random.Random(seed)
    m = FabModel()
    groups = [f"G{g}" for g in range(n_groups)]
    batch_groups = set(rnd.sample(groups, k=max(1, n_groups // 4)))
    setup_groups = set(rnd.sample(sorted(set(groups) - batch_groups), k=max(1, n_groups // 4)))
    setups = {g: [f"{g}-S{k}" for k in range(rnd.randint(2, 3))] for g in setup_groups}
    for names in setups.values():
        for s in names:
            m.add_setup(s, min_runs=rnd.choice([0, 2, 3]))
        for a in names:
            for b in names:
                if a != b and rnd.random() < 0.6:
                    m.set_setup_time(a, b, rnd.choice([5.0, 10.0, 30.0]))
            if rnd.random() < 0.5:
                m.set_setup_time("", a, 20.0)
    for r in range(n_routes):
        n = rnd.randint(*route_len)
        specs = []
        for pos in range(1, n + 1):
            g = rnd.choice(groups)
            batch = g in batch_groups
            qt = pos + rnd.randint(1, 2) if pos < n - 1 and rnd.random() < 0.25 else 0
            specs.append(StepSpec(
                group=g, recipe=f"R{r}-{pos}" if rnd.random() < 0.8 else f"{g}-common",
                ptime_min=rnd.choice([5.0, 12.5, 30.0, 60.0, 240.0]),
                per="batch" if batch else rnd.choice(["lot", "wafer"]),
                batch_min_wafers=50 if batch else 0, batch_max_wafers=100 if batch else 0,
                setup=rnd.choice(setups[g]) if g in setups else "",
                setup_time_min=rnd.choice([0.0, 0.0, 8.0]) if g in setups else 0.0,
                qt_to_step=qt, qt_limit_min=rnd.choice([60.0, 120.0, 600.0]) if qt else 0.0,
                rework_route=f"RW{r}" if pos > 1 and rnd.random() < 0.15 else "",
                rework_return_step=pos if rnd.random() < 0.5 else 0,
            ))
        m.add_route(f"R{r}", specs)
        m.add_route(f"RW{r}", [StepSpec(group=rnd.choice(groups), recipe=f"RW{r}-{k}",
                                        ptime_min=15.0) for k in (1, 2)])
        m.add_product(f"P{r}", f"R{r}")
    for g in groups:
        for k in range(rnd.randint(*tools_per_group)):
            t = m.add_tool(f"{g}-T{k}", g, setup="", state=rnd.choice(
                [E10State.STANDBY] * 5 + [E10State.PRODUCTIVE] * 2
                + [E10State.UNSCHEDULED_DOWN, E10State.ENGINEERING]))
            if g in setups and rnd.random() < 0.7:
                m._tools["tool_setup"][t] = m.setup_index[rnd.choice(setups[g])]
                m._tools["tool_setup_runs"][t] = rnd.randint(0, 4)
            m._tools["tool_busy_until_min"][t] = now_min + rnd.choice([-10.0, 0.0, 0.0, 3.0, 30.0])
            m._tools["tool_inhibited"][t] = rnd.random() < 0.08
            quals = m._tool_quals[t]
            if quals and rnd.random() < 0.3:   # partial qualification
                m._tool_quals[t] = sorted(rnd.sample(quals, k=max(1, len(quals) // 2)))
    m._quals_dirty = True
    for k in range(n_lots):
        p = rnd.randrange(n_routes)
        r = m.route_index[f"R{p}"]
        pos = rnd.randint(1, m.route_len[r])
        prio = rnd.choice([10] * 8 + [20, 30])
        i = m.add_lot(f"L{k}", f"P{p}", step=pos, wafers=rnd.choice([25, 25, 25, 12, 50]),
                      priority=prio, hot=_hot_class(prio, False),
                      due_min=now_min + rnd.uniform(-600.0, 6000.0),
                      arrival_min=now_min - rnd.choice([0.0, 5.0, 30.0, 120.0, 600.0,
                                                        rnd.uniform(0, 900)]),
                      hold=rnd.random() < 0.08)
        if rnd.random() < 0.2:
            s = int(m.lot_step[i])
            m._lots["lot_qt_step"][i] = s
            m._lots["lot_qt_deadline_min"][i] = now_min + rnd.uniform(-30.0, 300.0)
        if rnd.random() < 0.1:
            m._lots["lot_state"][i] = LotState.RUNNING
    m.arrays()
    return m
