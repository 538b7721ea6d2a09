"""The SPC engine the daemon runs every tick: charts by key, buffered points, one kernel call.

Usage (daemon core, once per tick, after applying the tick's events):

    engine = SpcEngine(config.spc)          # stores config only
    spc.warm()                              # before READY
    engine.add_points(points, step_of=...)  # ProcessPoints; charts register on first sight
    # or: cid = engine.register("ETCH01/PM1/STEP3/rf_power", tool_id="ETCH01", chamber="PM1")
    #     engine.add(cid, 412.0, ts, lot_id="LOT42") / engine.add_many(ids, values, ts)
    result = engine.evaluate()              # TickResult: violations + limit changes
    for v in result.violations: apply v.action, publish v on fab:quality
    for ch in result.limit_changes: publish ch

`set_limits()` and `reset()` apply at once (to points still buffered too) and
return their LimitChange for the caller to publish. `snapshot()` / `restore()`
carry limits, run windows, history and the points not yet evaluated across a restart;
`apply_config()` after `restore()` gives the charts a config edited meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from spc import kernel as kn
from spc.config import ChartSpec, ChartType, Reaction, SpcConfig
from spc.errors import SpcConfigError, UnknownChartError
from spc.limits import Limits, estimate_limits, known_limits

if TYPE_CHECKING:
    from equipment.events import ProcessPoint

log = logging.getLogger(__name__)

_KIND = {ChartType.I_MR: kn.KIND_INDIVIDUAL, ChartType.EWMA: kn.KIND_EWMA,
         ChartType.XBAR_R: kn.KIND_SUBGROUP, ChartType.XBAR_S: kn.KIND_SUBGROUP}
_SERIES = {ChartType.I_MR: ("x", "mr"), ChartType.EWMA: ("ewma", ""),
           ChartType.XBAR_R: ("xbar", "r"), ChartType.XBAR_S: ("xbar", "s")}


class Violation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One test firing on one point: what the daemon acts on and publishes."""

    chart_key: str
    chart_id: int
    tool_id: str
    chamber: str
    series: str  # the plotted statistic tested: x, ewma, xbar, or the dispersion chart mr, r, s
    test: int  # 1..8, Nelson numbering (Western Electric's "8 on one side" is test 2, K=8)
    description: str
    rule_set: str
    seq: int  # the flagged point's sequence number on this chart (0 = its first point)
    first_seq: int  # first point of the pattern (never before the last reset)
    statistic: float  # the flagged value on its series (the MR, R or S for dispersion)
    values: tuple[float, ...]  # plotted statistic of points first_seq..seq
    ts: tuple[float, ...]
    lot_ids: tuple[str, ...]
    # lot of the flagged point; for an X-bar chart every lot of the flagged subgroup,
    # comma-separated in arrival order (as a batch tool's "B1,B2"), all of them held by hold_lot
    lot_id: str
    limits_version: int
    # How many firings this stands for: > 1 only when a storm was folded (max_violations_per_tick)
    repeats: int = 1
    # What to do: the chart's reaction plan, downgraded when its target is unknown
    # (inhibit_chamber without a chamber -> inhibit_tool -> notify; hold_lot without a lot -> notify).
    action: Reaction


class LimitChange(msgspec.Struct, frozen=True, kw_only=True):
    """A new version of a chart's limits (an event the daemon publishes)."""

    chart_key: str
    chart_id: int
    tool_id: str
    chamber: str
    version: int  # 1 for the first limits; +1 on every change or reset
    reason: str  # config (also a config changed across a restart) | phase_i | set | reset
    limits: Limits | None  # None: back in phase I, collecting a new baseline
    ts: float


class TickResult(msgspec.Struct, kw_only=True):
    """What one evaluate() found."""

    violations: list[Violation]
    limit_changes: list[LimitChange]
    points_evaluated: int  # points that went through the tests
    points_collected: int  # points taken into phase I or a partial subgroup


def describe(test: int, spec: ChartSpec, series: str = "") -> str:
    """Return a one-line description of a test with the chart's K."""
    k = spec.params()
    if series in ("mr", "r", "s"):
        return f"{series.upper()} chart beyond its control limits"
    return {
        1: f"1 point beyond {k.k1_sigma:g} sigma",
        2: f"{k.k2_points} points in a row on one side of the centre line",
        3: f"{k.k3_points} points in a row steadily increasing or decreasing",
        4: f"{k.k4_points} points in a row alternating up and down",
        5: f"{k.k5_of_k_plus_1} out of {k.k5_of_k_plus_1 + 1} points beyond 2 sigma, same side",
        6: f"{k.k6_of_k_plus_1} out of {k.k6_of_k_plus_1 + 1} points beyond 1 sigma, same side",
        7: f"{k.k7_points} points in a row within 1 sigma",
        8: f"{k.k8_points} points in a row beyond 1 sigma, either side",
    }[test]


def _window(test: int, spec: ChartSpec) -> int:
    k = spec.params()
    return {1: 1, 2: k.k2_points, 3: k.k3_points, 4: k.k4_points, 5: k.k5_of_k_plus_1 + 1,
            6: k.k6_of_k_plus_1 + 1, 7: k.k7_points, 8: k.k8_points}[test]


def chart_key(tool_id: str, parameter: str, *, chamber: str = "", step: str = "") -> str:
    """Return the canonical chart key "<tool>/<chamber>/<step>/<parameter>" ("-" for none)."""
    return f"{tool_id}/{chamber or '-'}/{step or '-'}/{parameter}"


class _ChartState(msgspec.Struct, array_like=True):
    """One chart's Python-side facts in a snapshot."""

    key: str
    spec: ChartSpec
    tool_id: str
    chamber: str
    limits: Limits | None
    version: int
    phase_means: list[float]
    phase_disps: list[float]
    sub_values: list[float]
    # lot code of each point of the partial subgroup (snapshots without it: no lot)
    sub_lots: list[int] = []


class _Snapshot(msgspec.Struct, array_like=True):
    """Everything the engine needs to carry its windows across a daemon restart."""

    history_capacity: int
    columns: tuple[int, int, int, int]  # the kernel's state layout (N_FPAR, N_IPAR, N_IST, N_FST)
    charts: list[_ChartState]
    lots: list[str]
    arrays: dict[str, bytes]
    # Points buffered for the next evaluate() (chart id, value, ts, lot code): the daemon
    # saves at stop, when points that came in after the last tick are still waiting.
    pending: dict[str, bytes] = msgspec.field(default_factory=dict)


def _limits_basis(spec: ChartSpec) -> tuple:
    """What a chart's limits rest on: when it changes, the old limits mean nothing."""
    t = spec.chart_type
    return (t, spec.center, spec.sigma, spec.params().k1_sigma,
            spec.subgroup_size if t in (ChartType.XBAR_R, ChartType.XBAR_S) else 0,
            spec.ewma_lambda if t is ChartType.EWMA else 0.0)


def _downgrade(action: Reaction, tool_id: str, chamber: str) -> Reaction:
    if action is Reaction.INHIBIT_CHAMBER and not chamber:
        action = Reaction.INHIBIT_TOOL
    if action is Reaction.INHIBIT_TOOL and not tool_id:
        action = Reaction.NOTIFY
    return action


class _Chart:
    """Python-side facts of one chart (the kernel's side lives in the engine's arrays)."""

    __slots__ = ("actions", "chamber", "descriptions", "key", "limits", "phase_disps",
                 "phase_means", "rule_set", "series", "spec", "sub_lots", "sub_values",
                 "tool_id", "version", "warned", "widths")

    def __init__(self, key: str, spec: ChartSpec, tool_id: str, chamber: str) -> None:
        self.key = key
        self.spec = spec
        self.tool_id = tool_id
        self.chamber = chamber
        self.limits: Limits | None = None
        self.version = 0
        self.phase_means: list[float] = []
        self.phase_disps: list[float] = []
        self.sub_values: list[float] = []
        self.sub_lots: list[int] = []  # lot code of each point of the partial subgroup
        self.warned = False
        self.rule_set = spec.rules.value
        prim, disp = _SERIES[spec.chart_type]
        # per flag bit 0..8: the series tested, its description, the points a pattern spans
        self.series = (prim,) * 8 + (disp,)
        self.descriptions = (*(describe(t, spec, prim) for t in range(1, 9)),
                             describe(1, spec, disp) if disp else "")
        self.widths = [_window(t, spec) for t in range(1, 9)] + [
            2 if spec.chart_type is ChartType.I_MR else 1]
        # per flag bit: the reaction plan, downgraded when its target is unknown
        self.actions = tuple(_downgrade(spec.test_reactions.get(t, spec.reaction), tool_id, chamber)
                             for t in (1, 2, 3, 4, 5, 6, 7, 8, 1))


_COLUMNS = (kn.N_FPAR, kn.N_IPAR, kn.N_IST, kn.N_FST)
_PENDING_COLUMNS = ("ids", "values", "ts", "lots")
_PENDING_DTYPES = (np.int64, np.float64, np.float64, np.int32)
_SNAPSHOT_ARRAYS = ("_fpar", "_ipar", "_ist", "_fst", "_reset_seq", "_route", "_hist_stat",
                    "_hist_ts", "_hist_lot")


class SpcEngine:
    """Every control chart of the fab, evaluated incrementally once per tick."""

    def __init__(self, config: SpcConfig = SpcConfig(), *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        longest = max([config.history_points, config.default.params().longest_window(),
                       *(o.spec.params().longest_window() for o in config.overrides)])
        self.history_capacity = 1 << (longest - 1).bit_length()
        self._charts: list[_Chart] = []
        self._ids: dict[str, int] = {}
        self._cap = 0
        self._grow(64)  # the state arrays exist from the start (a snapshot with no charts)
        self._lot_codes: dict[str, int] = {"": 0}
        self._lots: list[str] = [""]
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._p_ids: list[int] = []
        self._p_vals: list[float] = []
        self._p_ts: list[float] = []
        self._p_lots: list[int] = []
        self._n_pending = 0
        self._queued_changes: list[LimitChange] = []
        # counters the daemon exports (fabd_spc_*_total)
        self.points_evaluated_total = 0
        self.points_dropped_total = 0  # refused (queue full), unknown chart or not finite
        self.violations_total = 0
        self.violations_coalesced_total = 0  # firings folded into another Violation in a storm
        self._storm = False
        self._lot_names = np.array([""], dtype=object)

    # ---- charts -------------------------------------------------------------

    def register(self, key: str, *, spec: ChartSpec | None = None, tool_id: str = "",
                 chamber: str = "") -> int:
        """Return the chart id for key, creating the chart (spec from config by key) if new."""
        cid = self._ids.get(key)
        if cid is not None:
            return cid
        spec = spec if spec is not None else self.config.spec_for(key)
        if spec.params().longest_window() > self.history_capacity:
            raise SpcConfigError(f"chart {key}: a test window of {spec.params().longest_window()} "
                                 f"points exceeds history_points={self.history_capacity}")
        cid = len(self._charts)
        if cid >= self._cap:
            self._grow(max(64, 2 * self._cap))
        ch = _Chart(key, spec, tool_id, chamber)
        self._charts.append(ch)
        self._ids[key] = cid
        self._ipar[cid] = self._ipar_row(spec)
        self._widths[cid] = ch.widths
        self._route[cid] = True
        if spec.center is not None and spec.sigma is not None:
            self._queued_changes.append(self._set(cid, known_limits(spec, spec.center, spec.sigma),
                                                  "config"))
        return cid

    def chart_id(self, key: str) -> int:
        """Return the id of a registered chart."""
        try:
            return self._ids[key]
        except KeyError:
            raise UnknownChartError(f"no SPC chart {key!r}") from None

    def key_of(self, chart_id: int) -> str:
        """Return the key of a chart id."""
        return self._charts[chart_id].key

    def spec_of(self, chart: str | int) -> ChartSpec:
        """Return a chart's spec."""
        return self._charts[self._cid(chart)].spec

    def limits(self, chart: str | int) -> Limits | None:
        """Return a chart's current limits (None while in phase I)."""
        return self._charts[self._cid(chart)].limits

    def version(self, chart: str | int) -> int:
        """Return a chart's limits version (0 before the first limits)."""
        return self._charts[self._cid(chart)].version

    def __len__(self) -> int:
        return len(self._charts)

    def set_limits(self, chart: str | int, center: float, sigma: float) -> LimitChange:
        """Set known limits (process centre and σ); the chart's windows restart."""
        cid = self._cid(chart)
        ch = self._charts[cid]
        return self._set(cid, known_limits(ch.spec, center, sigma), "set")

    def reset(self, chart: str | int, *, reestimate: bool = False) -> LimitChange:
        """Restart a chart's windows (and with reestimate, go back to phase I)."""
        cid = self._cid(chart)
        ch = self._charts[cid]
        if reestimate or ch.limits is None:
            return self._phase_i(cid, "reset")
        return self._set(cid, ch.limits, "reset")

    def apply_config(self) -> list[str]:
        """Give every chart the spec the config names for its key now; return the keys changed.

        A snapshot carries each chart's spec, so without this a config edited between a
        stop and a start (a new centre and σ, another chart type, K or reaction plan) was
        ignored for every chart seen before. A change of what the limits rest on starts a
        new phase: the config's known limits, or phase I again (reason "config"); a change
        of the tests only restarts the run windows under the same limits; a change of the
        reaction plan alone keeps windows and limits. The limit changes come out of the
        next evaluate(), like a new chart's.
        """
        changed = []
        for cid, old in enumerate(self._charts):
            spec = self.config.spec_for(old.key)
            if spec == old.spec:
                continue
            ch = _Chart(old.key, spec, old.tool_id, old.chamber)
            ch.limits, ch.version, ch.warned = old.limits, old.version, old.warned
            ch.phase_means, ch.phase_disps = old.phase_means, old.phase_disps
            ch.sub_values, ch.sub_lots = old.sub_values, old.sub_lots
            self._charts[cid] = ch
            self._ipar[cid] = self._ipar_row(spec)
            self._widths[cid] = ch.widths
            changed.append(ch.key)
            if _limits_basis(spec) != _limits_basis(old.spec):
                if spec.center is not None and spec.sigma is not None:
                    lim = known_limits(spec, spec.center, spec.sigma)
                    self._queued_changes.append(self._set(cid, lim, "config"))
                else:
                    self._queued_changes.append(self._phase_i(cid, "config"))
            elif self._ipar_row(spec) != self._ipar_row(old.spec):
                self._clear_state(cid)
        return changed

    def snapshot(self) -> bytes:
        """Return the engine's state (charts, limits, run windows, history, pending points) as bytes."""
        n = len(self._charts)
        charts = [_ChartState(key=c.key, spec=c.spec, tool_id=c.tool_id, chamber=c.chamber,
                              limits=c.limits, version=c.version, phase_means=c.phase_means,
                              phase_disps=c.phase_disps, sub_values=c.sub_values,
                              sub_lots=c.sub_lots)
                  for c in self._charts]
        arrays = {name: np.ascontiguousarray(getattr(self, name)[:n]).tobytes()
                  for name in _SNAPSHOT_ARRAYS}
        # the pending points stay pending here (take them, then put them back as one part)
        n_pending = self._n_pending
        taken = self._take_pending()
        self._pending, self._n_pending = ([taken] if taken[0].size else []), n_pending
        pending = {name: np.ascontiguousarray(col).tobytes()
                   for name, col in zip(_PENDING_COLUMNS, taken, strict=True)}
        return msgspec.msgpack.encode(_Snapshot(history_capacity=self.history_capacity,
                                                columns=_COLUMNS, charts=charts, lots=self._lots,
                                                arrays=arrays, pending=pending))

    def restore(self, data: bytes) -> None:
        """Load a snapshot into an empty engine: windows continue where they were."""
        if self._charts:
            raise SpcConfigError("restore() needs an engine with no charts registered")
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SpcConfigError(f"unreadable SPC snapshot: {exc}") from None
        if tuple(snap.columns) != _COLUMNS:
            raise SpcConfigError("the SPC snapshot is from a build with another state layout; "
                                 "start without it (charts take limits from config or phase I)")
        if snap.history_capacity != self.history_capacity:
            raise SpcConfigError(f"snapshot history capacity {snap.history_capacity} differs "
                                 f"from this engine's {self.history_capacity}")
        # checked before anything is loaded: a chart restored without its arrays would test
        # against zero limits (every point beyond them); refused whole, the charts start over
        n = len(snap.charts)
        for name in _SNAPSHOT_ARRAYS:
            arr = getattr(self, name)
            if len(snap.arrays.get(name, b"")) != n * arr[:1].nbytes:
                raise SpcConfigError(f"damaged SPC snapshot: {name.strip('_')} does not hold "
                                     f"{n} charts")
        lens = {len(snap.pending.get(name, b"")) // np.dtype(dtype).itemsize
                for name, dtype in zip(_PENDING_COLUMNS, _PENDING_DTYPES, strict=True)}
        if snap.pending and len(lens) != 1:
            raise SpcConfigError("damaged SPC snapshot: its pending points do not line up")
        for st in snap.charts:
            cid = self.register(st.key, spec=st.spec, tool_id=st.tool_id, chamber=st.chamber)
            ch = self._charts[cid]
            ch.limits, ch.version = st.limits, st.version
            ch.phase_means, ch.phase_disps, ch.sub_values = (st.phase_means, st.phase_disps,
                                                             st.sub_values)
            ch.sub_lots = [0] * (len(st.sub_values) - len(st.sub_lots)) + st.sub_lots
        self._queued_changes.clear()  # restoring publishes nothing
        for name in _SNAPSHOT_ARRAYS:
            arr = getattr(self, name)
            arr[:n] = np.frombuffer(snap.arrays[name], arr.dtype).reshape((n, *arr.shape[1:]))
        self._lots = snap.lots
        self._lot_names = np.array(self._lots, dtype=object)
        self._lot_codes = {lot: i for i, lot in enumerate(snap.lots)}
        if snap.pending:
            part = tuple(np.frombuffer(snap.pending[name], dtype).copy()
                         for name, dtype in zip(_PENDING_COLUMNS, _PENDING_DTYPES, strict=True))
            self._pending.append(part)  # type: ignore[arg-type]
            self._n_pending += part[0].shape[0]

    # ---- points -------------------------------------------------------------

    def add_points(self, points: Iterable[ProcessPoint], *,
                   step_of: Callable[[ProcessPoint], str] | None = None) -> int:
        """Buffer process points, registering a chart per tool/chamber/step/parameter on first sight.

        step_of maps a point to the step its lot ran when it was taken (the daemon knows);
        without it the key's step is "-". Returns how many points were accepted.
        """
        ids = self._ids
        codes = self._lot_codes
        p_ids, p_vals, p_ts, p_lots = self._p_ids, self._p_vals, self._p_ts, self._p_lots
        room = self.config.max_pending_points - self._n_pending
        accepted = 0
        for p in points:
            if accepted >= room:
                self.points_dropped_total += 1
                continue
            step = step_of(p) if step_of is not None else ""
            key = f"{p.tool_id}/{p.chamber or '-'}/{step or '-'}/{p.parameter}"  # chart_key()
            cid = ids.get(key)
            if cid is None:
                cid = self.register(key, tool_id=p.tool_id, chamber=p.chamber)
            code = codes.get(p.lot_id)
            p_ids.append(cid)
            p_vals.append(p.value)
            p_ts.append(p.ts)
            p_lots.append(self.lot_code(p.lot_id) if code is None else code)
            accepted += 1
        self._n_pending += accepted
        return accepted

    def add(self, chart: str | int, value: float, ts: float, lot_id: str = "") -> bool:
        """Buffer one point for the next evaluate(); False if refused (queue full)."""
        if self._n_pending >= self.config.max_pending_points:
            self.points_dropped_total += 1
            return False
        self._p_ids.append(self._cid(chart))
        self._p_vals.append(value)
        self._p_ts.append(ts)
        self._p_lots.append(self.lot_code(lot_id))
        self._n_pending += 1
        return True

    def add_many(self, chart_ids: np.ndarray, values: np.ndarray, ts: np.ndarray | float,
                 lot_ids: Sequence[str] | str | None = None) -> int:
        """Buffer many points (arrays, in arrival order); return how many were accepted."""
        # contiguous copies: the kernel is compiled for C-contiguous arrays (a strided view
        # would trigger a new compilation inside a tick), and the caller may reuse its buffers
        ids = np.array(chart_ids, np.int64, order="C")
        n = ids.shape[0]
        room = self.config.max_pending_points - self._n_pending
        if n > room:
            self.points_dropped_total += n - max(room, 0)
            n = max(room, 0)
            ids = ids[:n]
        vals = np.array(np.asarray(values, np.float64)[:n], order="C")
        t = np.broadcast_to(np.asarray(ts, np.float64), (n,)) if np.ndim(ts) == 0 \
            else np.asarray(ts, np.float64)[:n]
        if lot_ids is None or isinstance(lot_ids, str):
            lots = np.full(n, self.lot_code(lot_ids or ""), np.int32)
        else:
            lots = np.fromiter((self.lot_code(x) for x in lot_ids[:n]), np.int32, n)
        # points given one by one before these arrived before them: keep that order
        self._flush_singles()
        self._pending.append((ids, vals, np.array(t, np.float64), lots))
        self._n_pending += n
        return n

    def lot_code(self, lot_id: str) -> int:
        """Return the small int that stands for a lot id in the history arrays."""
        code = self._lot_codes.get(lot_id)
        if code is None:
            code = self._lot_codes[lot_id] = len(self._lots)
            self._lots.append(lot_id)
        return code

    def evaluate(self) -> TickResult:
        """Run the tests on every point buffered since the last call."""
        ids, vals, ts, lots = self._take_pending()
        changes, self._queued_changes = self._queued_changes, []
        ok = np.isfinite(vals) & (ids >= 0) & (ids < len(self._charts))
        if not ok.all():
            self.points_dropped_total += int(ok.size - ok.sum())
            ids, vals, ts, lots = ids[ok], vals[ok], ts[ok], lots[ok]
        disp = np.zeros(ids.shape[0])
        order = np.arange(ids.shape[0], dtype=np.int64)
        routed = self._route[ids] if ids.size else np.zeros(0, bool)
        collected = 0
        if routed.any():
            direct = ~routed
            extra, collected = self._route_points(np.flatnonzero(routed), ids, vals, ts, lots,
                                                  changes)
            ids = np.concatenate([ids[direct], extra[0]]).astype(np.int64)
            vals = np.concatenate([vals[direct], extra[1]])
            disp = np.concatenate([disp[direct], extra[2]])
            ts = np.concatenate([ts[direct], extra[3]])
            lots = np.concatenate([lots[direct], extra[4]]).astype(np.int32)
            order = np.concatenate([order[direct], extra[5]]).astype(np.int64)
        if ids.size > 1 and not (ids[1:] >= ids[:-1]).all():
            perm = np.lexsort((order, ids))
            ids, vals, disp, ts, lots = ids[perm], vals[perm], disp[perm], ts[perm], lots[perm]
        n = ids.shape[0]
        violations: list[Violation] = []
        if n:
            starts = np.flatnonzero(np.diff(ids)) + 1
            offsets = np.concatenate([[0], starts, [n]]).astype(np.int64)
            rows = ids[offsets[:-1]]
            flags = np.empty(n, np.uint16)
            stats = np.empty(n)
            seqs = np.empty(n, np.int64)
            kn.evaluate_batch(rows, offsets, vals, disp, self._fpar, self._ipar, self._ist,
                              self._fst, flags, stats, seqs)
            hot = np.flatnonzero(flags)
            if hot.size:
                violations = self._violations(hot, ids, offsets, flags, stats, disp, seqs, ts,
                                              lots)
            kn.push_history(rows, offsets, seqs, stats, ts, lots, self._hist_stat, self._hist_ts,
                            self._hist_lot)
        self.points_evaluated_total += n
        self.violations_total += len(violations)
        return TickResult(violations=violations, limit_changes=changes, points_evaluated=n,
                          points_collected=collected)

    # ---- internals ----------------------------------------------------------

    def _cid(self, chart: str | int) -> int:
        if isinstance(chart, str):
            return self.chart_id(chart)
        if not 0 <= chart < len(self._charts):
            raise UnknownChartError(f"no SPC chart with id {chart}")
        return int(chart)

    def _grow(self, cap: int) -> None:
        h = self.history_capacity
        old = self._cap
        fpar, ipar, ist, fst = kn.empty_state(cap)
        new = {"_fpar": fpar, "_ipar": ipar, "_ist": ist, "_fst": fst,
               "_reset_seq": np.zeros(cap, np.int64), "_route": np.zeros(cap, bool),
               "_widths": np.ones((cap, 9), np.int64),
               "_hist_stat": np.zeros((cap, h)), "_hist_ts": np.zeros((cap, h)),
               "_hist_lot": np.zeros((cap, h), np.int32)}
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)
            setattr(self, name, arr)
        self._cap = cap

    def _ipar_row(self, spec: ChartSpec) -> list[int]:
        k = spec.params()
        mask = 0
        for t in spec.enabled_tests():
            mask |= 1 << (t - 1)
        if spec.dispersion_test and spec.chart_type is not ChartType.EWMA:
            mask |= kn.DISPERSION_BIT
        kind = _KIND[spec.chart_type]
        if kind == kn.KIND_EWMA and spec.ewma_exact_limits:
            kind = kn.KIND_EWMA_EXACT
        return [mask, kind, k.k2_points, k.k3_points, k.k4_points,
                k.k5_of_k_plus_1, k.k6_of_k_plus_1, k.k7_points, k.k8_points]

    def _set(self, cid: int, lim: Limits, reason: str) -> LimitChange:
        ch = self._charts[cid]
        ch.limits = lim
        ch.version += 1
        z = lim.zones()
        self._fpar[cid] = (z.center, z.u1, z.l1, z.u2, z.l2, z.uk, z.lk, ch.spec.ewma_lambda,
                           z.disp_ucl, z.disp_lcl)
        self._route[cid] = ch.spec.chart_type in (ChartType.XBAR_R, ChartType.XBAR_S)
        self._clear_state(cid)
        return self._change(cid, reason)

    def _phase_i(self, cid: int, reason: str) -> LimitChange:
        ch = self._charts[cid]
        ch.phase_means.clear()
        ch.phase_disps.clear()
        ch.limits = None
        ch.version += 1
        self._route[cid] = True
        self._clear_state(cid)
        return self._change(cid, reason)

    def _change(self, cid: int, reason: str) -> LimitChange:
        ch = self._charts[cid]
        # config and phase-I limits arrive for every chart after start-up (they are events
        # on the stream): not worth a log line each; operator changes are
        log.log(logging.DEBUG if reason in ("config", "phase_i") else logging.INFO,
                "spc chart %s: limits v%d (%s)", ch.key, ch.version, reason)
        return LimitChange(chart_key=ch.key, chart_id=cid, tool_id=ch.tool_id, chamber=ch.chamber,
                           version=ch.version, reason=reason, limits=ch.limits, ts=self._clock())

    def _clear_state(self, cid: int) -> None:
        seq = self._ist[cid, kn.S_SEQ]
        self._ist[cid] = 0
        self._ist[cid, kn.S_SEQ] = seq
        self._fst[cid, kn.FS_PREV] = 0.0
        self._fst[cid, kn.FS_EWMA] = self._fpar[cid, kn.F_CENTER]
        self._fst[cid, kn.FS_W] = 1.0
        self._reset_seq[cid] = seq
        self._charts[cid].sub_values.clear()  # a subgroup never spans a reset
        self._charts[cid].sub_lots.clear()

    def _flush_singles(self) -> None:
        """Move the points given one by one into the pending parts, after the earlier parts."""
        if self._p_ids:
            self._pending.append((np.array(self._p_ids, np.int64),
                                  np.array(self._p_vals, np.float64),
                                  np.array(self._p_ts, np.float64),
                                  np.array(self._p_lots, np.int32)))
            self._p_ids, self._p_vals, self._p_ts, self._p_lots = [], [], [], []

    def _take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self._flush_singles()
        parts = self._pending
        self._pending = []
        self._n_pending = 0
        if not parts:
            return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.int32))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))  # type: ignore[return-value]

    def _route_points(self, idx: np.ndarray, ids: np.ndarray, vals: np.ndarray, ts: np.ndarray,
                      lots: np.ndarray, changes: list[LimitChange]) -> tuple[tuple, int]:
        """Take points of charts in phase I or building subgroups; return the ones to test."""
        out_ids: list[int] = []
        out_v: list[float] = []
        out_d: list[float] = []
        out_t: list[float] = []
        out_l: list[int] = []
        out_o: list[int] = []
        collected = 0
        for j in idx.tolist():
            cid = int(ids[j])
            ch = self._charts[cid]
            x = float(vals[j])
            if ch.spec.chart_type in (ChartType.XBAR_R, ChartType.XBAR_S):
                ch.sub_values.append(x)
                ch.sub_lots.append(int(lots[j]))
                if len(ch.sub_values) < ch.spec.subgroup_size:
                    collected += 1
                    continue
                sub = ch.sub_values
                mean = math.fsum(sub) / len(sub)
                if ch.spec.chart_type is ChartType.XBAR_R:
                    d = max(sub) - min(sub)
                else:
                    d = math.sqrt(math.fsum((v - mean) ** 2 for v in sub) / (len(sub) - 1))
                ch.sub_values = []
                lot = self._subgroup_lot(ch.sub_lots)
                ch.sub_lots = []
                x = mean
            else:
                d = 0.0
                lot = int(lots[j])
            if ch.limits is None:
                collected += 1
                self._ist[cid, kn.S_SEQ] += 1  # phase-I points keep their place in the numbering
                ch.phase_means.append(x)
                ch.phase_disps.append(d)
                if len(ch.phase_means) >= ch.spec.phase_i_points:
                    self._end_phase_i(cid, changes)
                continue
            out_ids.append(cid)
            out_v.append(x)
            out_d.append(d)
            out_t.append(float(ts[j]))
            out_l.append(lot)
            out_o.append(j)
        return (np.array(out_ids, np.int64), np.array(out_v), np.array(out_d), np.array(out_t),
                np.array(out_l, np.int32), np.array(out_o, np.int64)), collected

    def _subgroup_lot(self, codes: list[int]) -> int:
        """Return the lot code naming every lot of a subgroup, comma-separated in arrival order.

        A subgroup is the next n points of the chart, so it can span lots (and a batch's
        point is already "B1,B2"); its mean stands for all of them, and a reaction that
        holds the lot of a flagged subgroup must hold each (the daemon splits at commas).
        """
        if all(c == codes[0] for c in codes):
            return codes[0]
        names: dict[str, None] = {}
        for c in codes:
            for name in self._lots[c].split(","):
                if name.strip():
                    names[name.strip()] = None
        return self.lot_code(",".join(names))

    def _end_phase_i(self, cid: int, changes: list[LimitChange]) -> None:
        ch = self._charts[cid]
        lim = estimate_limits(ch.spec, ch.phase_means, ch.phase_disps)
        ch.phase_means = []
        ch.phase_disps = []
        if lim is None:
            if not ch.warned:
                ch.warned = True
                log.warning("spc chart %s: phase-I baseline has no spread; collecting again",
                            ch.key)
            return
        changes.append(self._set(cid, lim, "phase_i"))

    def _violations(self, hot: np.ndarray, ids: np.ndarray, offsets: np.ndarray,
                    flags: np.ndarray, stats: np.ndarray, disp: np.ndarray, seqs: np.ndarray,
                    ts: np.ndarray, lots: np.ndarray) -> list[Violation]:
        """Turn flagged points into Violations with the points each pattern involves."""
        # one row per (flagged point, fired bit), in point order then test order
        f = flags[hot].astype(np.int64)
        which, bit = np.nonzero((f[:, None] >> np.arange(9)) & 1)
        pi = hot[which]
        cid = ids[pi]
        repeats = None
        if pi.size > self.config.max_violations_per_tick:
            # storm: keep the latest firing per (chart, test, lot of the flagged point)
            lotc = lots[pi]
            order = np.lexsort((pi, lotc, bit, cid))
            key_change = np.flatnonzero((np.diff(cid[order]) != 0) | (np.diff(bit[order]) != 0)
                                        | (np.diff(lotc[order]) != 0))
            last = np.concatenate([key_change, [order.size - 1]])
            group_size = np.diff(np.concatenate([[-1], last]))
            keep = order[last]
            by_row = np.argsort(keep, kind="stable")
            keep, repeats = keep[by_row], group_size[by_row].tolist()
            self.violations_coalesced_total += int(pi.size - keep.size)
            if not self._storm:
                log.warning("spc: %d firings in one tick (more than %d): folding repeats per "
                            "chart, test and lot", pi.size, self.config.max_violations_per_tick)
            pi, cid, bit = pi[keep], cid[keep], bit[keep]
        elif self._storm:
            log.info("spc: firings back under %d per tick", self.config.max_violations_per_tick)
        self._storm = repeats is not None
        seq = seqs[pi]
        batch_first = seq - (pi - offsets[np.searchsorted(offsets, pi, side="right") - 1])
        first = np.maximum(seq - self._widths[cid, bit] + 1, self._reset_seq[cid])
        cnt = seq - first + 1
        # every involved point, flattened: from this batch, or from the chart's ring buffer
        ends = np.cumsum(cnt)
        rep = np.repeat(np.arange(cnt.size), cnt)
        q = first[rep] + (np.arange(int(ends[-1])) - (ends - cnt)[rep])
        in_batch = q >= batch_first[rep]
        p = np.where(in_batch, pi[rep] - (seq[rep] - q), 0)
        slot = q & (self.history_capacity - 1)
        cq = cid[rep]
        vals_a = np.where(in_batch, stats[p], self._hist_stat[cq, slot])
        tss = np.where(in_batch, ts[p], self._hist_ts[cq, slot]).tolist()
        if len(self._lot_names) != len(self._lots):
            self._lot_names = np.array(self._lots, dtype=object)
        lot_ids = self._lot_names[np.where(in_batch, lots[p], self._hist_lot[cq, slot])].tolist()
        statistic = np.where(bit == 8, disp[pi], stats[pi])
        is_mr = (bit == 8) & (cnt == 2)
        if is_mr.any():  # the moving range is |x_i − x_(i−1)|, both points reported
            last = ends - 1
            statistic = np.where(is_mr, np.abs(vals_a[last] - vals_a[np.maximum(last - 1, 0)]),
                                 statistic)
        vals = vals_a.tolist()
        charts = self._charts
        out: list[Violation] = []
        a = 0
        for j, (c, b, sq, fs, e, st) in enumerate(zip(
                cid.tolist(), bit.tolist(), seq.tolist(), first.tolist(), ends.tolist(),
                statistic.tolist(), strict=True)):
            ch = charts[c]
            lids = tuple(lot_ids[a:e])
            action = ch.actions[b]
            if action is Reaction.HOLD_LOT and not lids[-1]:
                action = Reaction.NOTIFY
            out.append(Violation(
                chart_key=ch.key, chart_id=c, tool_id=ch.tool_id, chamber=ch.chamber,
                series=ch.series[b], test=1 if b == 8 else b + 1, description=ch.descriptions[b],
                rule_set=ch.rule_set, seq=sq, first_seq=fs, statistic=st,
                values=tuple(vals[a:e]), ts=tuple(tss[a:e]), lot_ids=lids, lot_id=lids[-1],
                limits_version=ch.version, repeats=1 if repeats is None else repeats[j],
                action=action))
            a = e
        return out
