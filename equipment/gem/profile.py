"""GEM driver profiles: what a tool type's CEIDs, VIDs, ALIDs and state values mean to fabd.

A profile is pure configuration (a frozen msgspec Struct, loadable from TOML):
the reports to define (S2F33), the links (S2F35), the alarms to enable (S5F3),
the status variables to read at start-up (S1F3), the trace ids (S2F23), and the
*roles* that turn a collection event into a domain event (which CEID means
"process started", which VID holds the lot id, which value of the control-state
SV means "on-line remote").

`kind` leaves room for other dialects: "gem" tools run a lot with PP-SELECT +
START; a later "gem300" profile would add E40 process jobs / E94 control jobs
(S16/S14) and E87 carrier events with the same role mechanism.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from equipment.events import (
    ControlState,
    ControlStateChanged,
    DomainEvent,
    E10State,
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
)
from equipment.gem.errors import GemConfigError
from equipment.secs import L


class ReportDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One report the host defines (S2F33): RPTID → VIDs."""

    rptid: int
    vids: list[int]


class EventLink(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One event link (S2F35): CEID → RPTIDs."""

    ceid: int
    rptids: list[int]


class ParameterDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A process parameter: the VID that carries it and the name SPC charts it under."""

    vid: int
    name: str


class GemDriverProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one tool type speaks GEM, and how its messages map to fabd domain events."""

    name: str
    kind: Literal["gem"] = "gem"  # "gem300" (E40/E94 jobs) is the planned extension
    reports: list[ReportDef] = []
    links: list[EventLink] = []
    alids: list[int] = []  # alarms enabled at start-up (one S5F3 each)
    status_svids: list[int] = []  # read with S1F3 at start-up

    # Event roles: which CEIDs mean what.
    ceids_process_started: list[int] = []
    ceids_process_completed: list[int] = []
    ceids_e10_changed: list[int] = []
    ceids_control_changed: list[int] = []
    ceids_recipe_changed: list[int] = []

    # Value roles: which VID (SV or DV) carries what, 0 = not available.
    vid_lot_id: int = 0
    vid_recipe_id: int = 0
    vid_lot_result: int = 0
    vid_e10_state: int = 0
    vid_e10_reason: int = 0
    vid_control_state: int = 0
    vid_process_state: int = 0
    vid_pp_exec_name: int = 0
    vid_current_lot: int = 0
    vid_spool_count: int = 0  # SV saying how many messages the tool spooled; 0 = always ask
    lot_result_ok: list[int] = msgspec.field(default_factory=lambda: [0])  # "conforming"
    process_idle_values: list[int] = []  # process-state values meaning "runs nothing"
    parameters: list[ParameterDef] = []  # collected with ProcessCompleted, charted by SPC
    trace: list[ParameterDef] = []  # sampled with S2F23/S6F1 (trace_period_s > 0)

    # State values as the tool reports them (stringified) → fabd's names.
    e10_values: dict[str, E10State] = {}  # empty: the tool reports fabd's names
    control_values: dict[str, ControlState] = {}

    def validate(self) -> None:
        """Raise GemConfigError when links point at undefined reports or roles are incomplete."""
        rptids = {r.rptid for r in self.reports}
        if len(rptids) != len(self.reports):
            raise GemConfigError(f"profile {self.name}: duplicate RPTID in reports")
        for link in self.links:
            missing = [r for r in link.rptids if r not in rptids]
            if missing:
                raise GemConfigError(f"profile {self.name}: CEID {link.ceid} links undefined "
                                     f"RPTIDs {missing}")
        if (self.ceids_process_started or self.ceids_process_completed) and not self.vid_lot_id:
            raise GemConfigError(f"profile {self.name}: process events need vid_lot_id")

    # ---- derived lookups ------------------------------------------------------------------

    def report_vids(self) -> dict[int, list[int]]:
        """Return RPTID → VIDs."""
        return {r.rptid: r.vids for r in self.reports}

    def e10_state(self, raw: Any) -> E10State | None:
        """Map a tool's E10 value to fabd's E10State (None: unknown value)."""
        key = str(raw)
        if key in self.e10_values:
            return self.e10_values[key]
        try:
            return E10State(key)
        except ValueError:
            return None

    def control_state(self, raw: Any) -> ControlState | None:
        """Map a tool's control-state value to fabd's ControlState (None: unknown value)."""
        return self.control_values.get(str(raw))


_GEM_CONTROL = {
    "1": ControlState.EQUIPMENT_OFFLINE,
    "2": ControlState.ATTEMPT_ONLINE,
    "3": ControlState.HOST_OFFLINE,
    "4": ControlState.ONLINE_LOCAL,
    "5": ControlState.ONLINE_REMOTE,
}

# The shared "fabd-sim" numbering (see equipment/sim/gem_tool.py FabdSim and the farm).
FABD_SIM = GemDriverProfile(
    name="fabd-sim",
    reports=[
        ReportDef(rptid=3001, vids=[2001, 2002]),
        ReportDef(rptid=3002, vids=[2001, 2002, 2010, 2011, 2012, 2013, 2004]),
        ReportDef(rptid=3003, vids=[1003, 2003]),
        ReportDef(rptid=3004, vids=[1001]),
        ReportDef(rptid=3005, vids=[1004]),
    ],
    links=[EventLink(ceid=c, rptids=[c]) for c in (3001, 3002, 3003, 3004, 3005)],
    alids=[5001, 5002, 5003],
    status_svids=[1001, 1002, 1003, 1004, 1005, 1006],
    ceids_process_started=[3001],
    ceids_process_completed=[3002],
    ceids_e10_changed=[3003],
    ceids_control_changed=[3004],
    ceids_recipe_changed=[3005],
    vid_lot_id=2001,
    vid_recipe_id=2002,
    vid_lot_result=2004,
    vid_e10_state=1003,
    vid_e10_reason=2003,
    vid_control_state=1001,
    vid_process_state=1002,
    vid_pp_exec_name=1004,
    vid_current_lot=1006,
    process_idle_values=[0],
    parameters=[ParameterDef(vid=2010, name="Temperature_C"),
                ParameterDef(vid=2011, name="Pressure_Pa"),
                ParameterDef(vid=2012, name="RFPower_W"),
                ParameterDef(vid=2013, name="Thickness_nm")],
    trace=[ParameterDef(vid=2010, name="Temperature_C"),
           ParameterDef(vid=2011, name="Pressure_Pa"),
           ParameterDef(vid=2012, name="RFPower_W")],
    control_values=_GEM_CONTROL,
)

PROFILES: dict[str, GemDriverProfile] = {FABD_SIM.name: FABD_SIM}


def register_profile(profile: GemDriverProfile) -> None:
    """Add (or replace) a driver profile, e.g. one loaded from the site's TOML config."""
    profile.validate()
    PROFILES[profile.name] = profile


def get_profile(name: str) -> GemDriverProfile:
    """Return the named profile (raises GemConfigError when unknown)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise GemConfigError(f"unknown GEM driver profile {name!r} "
                             f"(known: {', '.join(sorted(PROFILES))})") from None


class EventTranslator:
    """Turn collection-event values into domain events with one profile's roles (pure, no I/O)."""

    def __init__(self, tool_id: str, profile: GemDriverProfile) -> None:
        self.tool_id = tool_id
        self.profile = profile
        self._report_vids = profile.report_vids()
        p = profile
        self._started = set(p.ceids_process_started)
        self._completed = set(p.ceids_process_completed)
        self._e10 = set(p.ceids_e10_changed)
        self._control = set(p.ceids_control_changed)
        self._recipe = set(p.ceids_recipe_changed)

    def values(self, reports: Sequence[tuple[int, Sequence[Any]]]) -> dict[int, Any]:
        """Return VID → value for the reports of one S6F11 (by our own report definitions)."""
        out: dict[int, Any] = {}
        for rptid, values in reports:
            vids = self._report_vids.get(rptid)
            if vids is None:
                continue
            for vid, value in zip(vids, values, strict=False):
                out[vid] = value
        return out

    def selected_recipe(self, ceid: int, values: dict[int, Any]) -> str | None:
        """Return the recipe a RecipeChanged-role event names (None for other events)."""
        if ceid not in self._recipe or not self.profile.vid_pp_exec_name:
            return None
        return _text(values.get(self.profile.vid_pp_exec_name))

    def translate(self, ceid: int, values: dict[int, Any],
                  ts: float | None = None) -> list[DomainEvent]:
        """Return the domain events one collection event means (empty: nothing fabd tracks).

        `values` may hold plain values or undecoded SECS-II items (converted only when used).
        """
        p = self.profile
        ts = time.time() if ts is None else ts
        events: list[DomainEvent] = []
        if ceid in self._started:
            events.append(ProcessStarted(
                tool_id=self.tool_id, ts=ts, lot_id=_text(values.get(p.vid_lot_id)),
                recipe_id=_text(values.get(p.vid_recipe_id))))
        elif ceid in self._completed:
            parameters = {}
            for param in p.parameters:
                value = _scalar(values.get(param.vid))
                if isinstance(value, int | float) and not isinstance(value, bool):
                    parameters[param.name] = float(value)
            result = _scalar(values.get(p.vid_lot_result))
            ok = result is None or result in p.lot_result_ok
            events.append(ProcessCompleted(
                tool_id=self.tool_id, ts=ts, lot_id=_text(values.get(p.vid_lot_id)),
                recipe_id=_text(values.get(p.vid_recipe_id)), ok=ok, parameters=parameters))
        if ceid in self._e10:
            state = p.e10_state(_scalar(values.get(p.vid_e10_state)))
            if state is not None:
                events.append(E10StateChanged(tool_id=self.tool_id, ts=ts, state=state,
                                              reason=_text(values.get(p.vid_e10_reason))))
        if ceid in self._control:
            control = p.control_state(_scalar(values.get(p.vid_control_state)))
            if control is not None:
                events.append(ControlStateChanged(tool_id=self.tool_id, ts=ts, state=control))
        return events


def _scalar(value: Any) -> Any:
    """Return a leaf's plain value: SECS-II arrays of one element → that element, A → str."""
    if isinstance(value, tuple):  # numeric/boolean items (and L, which has no scalar)
        n = len(value)
        if n == 1 and not isinstance(value, L):
            return value[0]
        return None if n == 0 else value
    if type(value) is not str and isinstance(value, str):
        return str(value)
    return value


def _text(value: Any) -> str:
    value = _scalar(value)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
