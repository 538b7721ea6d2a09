"""The event contract: every event fabd publishes and every ERP command it accepts.

Outbound entries (streams `<prefix>:lots`, `:equipment`, `:quality`, `:wip`)
carry the fields `type`, `v`, `seq`, `eid`, `ts` and `data` (JSON of one of the
`*Event` structs below, chosen by `type`). Delivery is at least once:

- `eid` is globally unique and the same on every re-send; consumers dedupe on it.
- `seq` counts the entries of one stream of one daemon: 1, 2, 3, ... with no
  gaps, so a consumer of one stream can tell a gap from an interleaving. A
  re-sent entry repeats its `seq`.

Inbound ERP commands are entries on `<prefix>:erp:commands` with one field,
`cmd`, holding the JSON of one of the `*Command` structs (tag field `type`).
Each has a `command_id` chosen by the ERP: a command id is applied once.

Bump `SCHEMA_VERSION` when a field changes meaning or a required field is
added; adding an optional field keeps the version.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

SCHEMA_VERSION = 1

STREAMS = ("lots", "equipment", "quality", "wip")

Id = Annotated[str, Meta(min_length=1, max_length=128)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
Wafers = Annotated[int, Meta(ge=1, le=1000)]


class OutEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the `data` of an outbound entry; TYPE and STREAM route it."""

    TYPE: ClassVar[str] = ""
    STREAM: ClassVar[str] = ""


# ---------------------------------------------------------------- <prefix>:lots


class _LotEvent(OutEvent, frozen=True, kw_only=True):
    STREAM: ClassVar[str] = "lots"
    lot_id: str
    product_id: str
    step_id: str  # the step the lot is at after the event (WIP key with product_id)
    wafers: int


class LotCreated(_LotEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "lot_created"
    production_order: str
    route_id: str
    priority: int
    due: dt.datetime | None = None


class LotTrackedIn(_LotEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "lot_tracked_in"
    tool_id: str
    recipe_id: str = ""


class LotTrackedOut(_LotEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "lot_tracked_out"
    tool_id: str
    ok: bool = True  # False: the tool judged the lot non-conforming


class LotMoved(_LotEvent, frozen=True, kw_only=True):
    """The lot left `from_step_id` and is queued at `step_id`."""

    TYPE: ClassVar[str] = "lot_moved"
    from_step_id: str
    route_id: str


class LotReworked(_LotEvent, frozen=True, kw_only=True):
    """The lot left `from_step_id` for the first step of a rework route."""

    TYPE: ClassVar[str] = "lot_reworked"
    from_step_id: str
    route_id: str  # the rework route
    return_step_id: str  # where it goes back when the rework route is done


class LotHeld(_LotEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "lot_held"
    reason: str
    by: str


class LotSplit(_LotEvent, frozen=True, kw_only=True):
    """A new lot (`lot_id`, `wafers`) was split off `parent_lot_id`, which keeps
    `parent_wafers`; both are at (product_id, step_id): WIP lots there + 1, wafers unchanged.
    The child carries the parent's order, route position, priority, due date and holds."""

    TYPE: ClassVar[str] = "lot_split"
    parent_lot_id: str
    parent_wafers: int
    production_order: str
    reason: str
    by: str


class LotMerged(_LotEvent, frozen=True, kw_only=True):
    """The lot (`lot_id`, its `wafers`) was merged into `into_lot_id`, which now has
    `into_wafers`, and left the WIP: WIP lots at (product_id, step_id) - 1, wafers unchanged."""

    TYPE: ClassVar[str] = "lot_merged"
    into_lot_id: str
    into_wafers: int
    reason: str
    by: str


class FutureHoldSet(_LotEvent, frozen=True, kw_only=True):
    """A hold planned for the lot's arrival at `at_step` (hold_lot with at_step): the lot is
    not held yet; `lot_held` follows when it arrives there."""

    TYPE: ClassVar[str] = "future_hold_set"
    reason: str
    by: str
    at_step: str


class FutureHoldCancelled(_LotEvent, frozen=True, kw_only=True):
    """A planned hold was withdrawn (release_lot naming it) before the lot reached `at_step`."""

    TYPE: ClassVar[str] = "future_hold_cancelled"
    hold_reason: str  # the planned hold's reason
    at_step: str
    reason: str  # why it was withdrawn
    by: str


class LotReleased(_LotEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "lot_released"
    reason: str
    by: str
    still_held: bool = False  # other holds remain


class LotCompletionLost(_LotEvent, frozen=True, kw_only=True):
    """The tool no longer runs the lot and never reported its end (lost while the link was
    down): fabd took it off the tool, which is free again. The lot stays at `step_id`, held
    (a `lot_held` follows): whether the step was done is for an engineer to say."""

    TYPE: ClassVar[str] = "lot_completion_lost"
    tool_id: str


class LotCompleted(_LotEvent, frozen=True, kw_only=True):
    """The lot finished its last step and left the WIP (step_id: that last step)."""

    TYPE: ClassVar[str] = "lot_completed"


class LotScrapped(_LotEvent, frozen=True, kw_only=True):
    """The lot left the WIP as scrap at `step_id`."""

    TYPE: ClassVar[str] = "lot_scrapped"
    reason: str
    by: str


class LotUpdated(_LotEvent, frozen=True, kw_only=True):
    """The ERP changed what it owns about a lot in the fab (update_lot): the values after the
    change, and which of them changed."""

    TYPE: ClassVar[str] = "lot_updated"
    production_order: str
    priority: int
    due: dt.datetime | None = None
    changed: list[str]  # of "priority", "due", "production_order"
    reason: str
    by: str


class WafersScrapped(_LotEvent, frozen=True, kw_only=True):
    """Some wafers of the lot were scrapped (scrap_wafers); `wafers` is what the lot has left
    and `scrapped` how many it lost: WIP wafers at (product_id, step_id) fall by `scrapped`."""

    TYPE: ClassVar[str] = "wafers_scrapped"
    scrapped: int
    reason: str
    by: str


class TrackInRefused(OutEvent, frozen=True, kw_only=True):
    """A lot was not allowed onto a tool (process enforcement)."""

    TYPE: ClassVar[str] = "track_in_refused"
    STREAM: ClassVar[str] = "lots"
    lot_id: str
    tool_id: str
    step_id: str
    code: str  # e.g. not_qualified, recipe_not_approved, recipe_mismatch, lot_held, tool_inhibited
    detail: str = ""


# ----------------------------------------------------------- <prefix>:equipment


class _ToolEvent(OutEvent, frozen=True, kw_only=True):
    STREAM: ClassVar[str] = "equipment"
    tool_id: str


class ToolStateChanged(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool_state_changed"
    state: str  # SEMI E10: productive, standby, engineering, scheduled_down, ...
    previous: str
    reason: str = ""


class ToolControlStateChanged(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool_control_state_changed"
    state: str  # GEM E30 control state


class ToolConnected(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool_connected"
    protocol: str
    peer: str = ""


class ToolDisconnected(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool_disconnected"
    protocol: str
    reason: str = ""


class AlarmSet(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "alarm_set"
    alid: int
    text: str = ""


class AlarmCleared(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "alarm_cleared"
    alid: int
    text: str = ""


class RecipeVerified(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "recipe_verified"
    recipe_id: str
    version: int
    checksum: str


class RecipeMismatch(_ToolEvent, frozen=True, kw_only=True):
    """The tool holds a body no approved version matches: the tool is inhibited for it."""

    TYPE: ClassVar[str] = "recipe_mismatch"
    recipe_id: str
    checksum: str  # what the tool holds
    approved: list[str] = []  # the approved checksums


class ToolInhibitChanged(_ToolEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool_inhibit_changed"
    inhibit: str  # "recipe:<id>", "spc:<chart>", ...
    active: bool
    reason: str = ""


class DispatchList(_ToolEvent, frozen=True, kw_only=True):
    """Advisory mode: the ranked lots the dispatcher proposes for an idle tool."""

    TYPE: ClassVar[str] = "dispatch_list"
    lots: list[str]
    scores: list[float] = []


class ProcessUnexpected(_ToolEvent, frozen=True, kw_only=True):
    """A tool reported processing the MES did not expect (unknown lot, held lot, ...)."""

    TYPE: ClassVar[str] = "process_unexpected"
    lot_id: str
    what: str  # "started" | "completed"
    reason: str


# ------------------------------------------------------------- <prefix>:quality


class ParameterSummary(msgspec.Struct, frozen=True, kw_only=True):
    parameter: str
    n: int
    mean: float
    min: float
    max: float
    sd: float  # sample standard deviation (0 when n < 2)


class ProcessDataSummary(OutEvent, frozen=True, kw_only=True):
    """Process data of one lot at one step on one tool, summarised at track-out."""

    TYPE: ClassVar[str] = "process_data_summary"
    STREAM: ClassVar[str] = "quality"
    lot_id: str
    product_id: str
    step_id: str
    tool_id: str
    recipe_id: str = ""
    parameters: list[ParameterSummary]


class SpcPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One point of the pattern that fired (the plotted statistic, its time and lot)."""

    value: float
    ts: float
    lot_id: str = ""


class SpcViolation(OutEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "spc_violation"
    STREAM: ClassVar[str] = "quality"
    chart: str  # chart key "<tool>/<chamber>/<step>/<parameter>" ("-" for none)
    tool_id: str
    parameter: str
    rule: str  # rule set + Nelson test number, e.g. "nelson1", "we5"; "_mr"/"_r"/"_s": dispersion
    value: float  # the flagged point's statistic
    lot_id: str = ""  # lot of the flagged point
    action: str = ""  # reaction plan taken: "hold_lot", "inhibit_tool", "inhibit_chamber", "notify"
    chamber: str = ""
    test: int = 0  # 1..8 (Nelson numbering)
    description: str = ""  # e.g. "9 points in a row on one side of the centre line"
    limits_version: int = 0
    points: list[SpcPoint] = []  # the points involved, first to flagged


class SpcLimitsChanged(OutEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "spc_limits_changed"
    STREAM: ClassVar[str] = "quality"
    chart: str
    center: float
    lcl: float
    ucl: float
    reason: str = ""


# ----------------------------------------------------------------- <prefix>:wip


class WipCount(msgspec.Struct, frozen=True, kw_only=True):
    product_id: str
    step_id: str
    lots: int
    wafers: int


class WipSnapshot(OutEvent, frozen=True, kw_only=True):
    """Lots and wafers per product and step after every `<prefix>:lots` entry up to `lots_seq`."""

    TYPE: ClassVar[str] = "wip_snapshot"
    STREAM: ClassVar[str] = "wip"
    lots_seq: int  # the last <prefix>:lots seq this snapshot covers (0: none yet)
    total_lots: int
    total_wafers: int
    counts: list[WipCount]


OUT_EVENTS: tuple[type[OutEvent], ...] = (
    LotCreated, LotTrackedIn, LotTrackedOut, LotCompletionLost, LotMoved, LotReworked, LotHeld,
    LotReleased, LotCompleted, LotScrapped, LotUpdated, WafersScrapped, LotSplit,
    LotMerged, FutureHoldSet, FutureHoldCancelled, TrackInRefused,
    ToolStateChanged, ToolControlStateChanged, ToolConnected, ToolDisconnected, AlarmSet,
    AlarmCleared, RecipeVerified, RecipeMismatch, ToolInhibitChanged, DispatchList,
    ProcessUnexpected,
    ProcessDataSummary, SpcViolation, SpcLimitsChanged,
    WipSnapshot,
)
EVENT_TYPES: dict[str, type[OutEvent]] = {t.TYPE: t for t in OUT_EVENTS}


# Redis stream fields are strings: `v` and `seq` arrive as decimal digits ("1", not 1).
Decimal = Annotated[str, Meta(pattern="^[0-9]+$")]


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of one outbound stream entry, as a consumer reads them (all strings)."""

    type: str
    v: Decimal  # schema version, an integer in decimal
    seq: Decimal  # per-stream sequence number, an integer in decimal
    eid: str
    ts: str  # UTC, ISO 8601
    data: str  # JSON of the event struct named by `type`


# ------------------------------------------------------------ ERP -> fabd commands


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type",
               forbid_unknown_fields=True):
    command_id: Id  # chosen by the ERP; a command id is applied once


class RouteStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    step_id: Id
    tool_group: Id
    recipe_id: Id
    recipe_version: Annotated[int, Meta(ge=1)]
    process_time_s: Annotated[float, Meta(gt=0)]
    batch_min_lots: Annotated[int, Meta(ge=1)] = 1
    batch_max_lots: Annotated[int, Meta(ge=1)] = 1
    setup_group: str = ""
    queue_time_limit_s: Annotated[float, Meta(ge=0)] = 0.0  # 0: no limit
    rework_route_id: str = ""  # "" : no rework route; the lot is held when non-conforming


class DefineRoute(_Command, frozen=True, kw_only=True, tag="define_route"):
    route_id: Id
    steps: Annotated[list[RouteStep], Meta(min_length=1)]


class DefineProduct(_Command, frozen=True, kw_only=True, tag="define_product"):
    product_id: Id
    route_id: Id
    description: str = ""


class DefineTool(_Command, frozen=True, kw_only=True, tag="define_tool"):
    tool_id: Id
    tool_group: Id


class CreateLot(_Command, frozen=True, kw_only=True, tag="create_lot"):
    lot_id: Id
    production_order: Id
    product_id: Id
    wafers: Wafers
    priority: Annotated[int, Meta(ge=0, le=100)] = 50
    # with a UTC offset ("...Z" or "+01:00"): a bare local time means another thing on
    # every server it is read on
    due: Annotated[dt.datetime, Meta(tz=True)] | None = None


class HoldLot(_Command, frozen=True, kw_only=True, tag="hold_lot"):
    """Hold a lot now, or (at_step: a step of its route ahead of it) when it arrives there,
    before that step runs (a future hold; release_lot naming its reason withdraws it)."""

    lot_id: Id
    reason: Id
    by: Id
    at_step: str = ""


class ReleaseLot(_Command, frozen=True, kw_only=True, tag="release_lot"):
    lot_id: Id
    reason: Id
    by: Id
    # release only this hold (or withdraw this future hold); "" releases every hold the lot
    # has now (future holds stay)
    hold_reason: str = ""


class ScrapLot(_Command, frozen=True, kw_only=True, tag="scrap_lot"):
    lot_id: Id
    reason: Id
    by: Id


class UpdateLot(_Command, frozen=True, kw_only=True, tag="update_lot"):
    """The ERP changes what it owns about a lot already in the fab: its priority (an expedite),
    its due date (a new delivery commitment; null removes it) or the production order it is
    pegged to. A field left out stays as it is; at least one must be given. Dispatch ranks the
    lot by the new values from the next tick on."""

    lot_id: Id
    reason: Id
    by: Id
    priority: Annotated[int, Meta(ge=0, le=100)] | msgspec.UnsetType = msgspec.UNSET
    due: Annotated[dt.datetime, Meta(tz=True)] | msgspec.UnsetType | None = msgspec.UNSET
    production_order: Id | msgspec.UnsetType = msgspec.UNSET


class ScrapWafers(_Command, frozen=True, kw_only=True, tag="scrap_wafers"):
    """Some wafers of a lot are scrapped (broken, out of spec); the lot goes on with the rest.
    `wafers` is how many are scrapped, fewer than the lot has: scrapping the whole lot is
    scrap_lot."""

    lot_id: Id
    wafers: Wafers
    reason: Id
    by: Id


class SplitLot(_Command, frozen=True, kw_only=True, tag="split_lot"):
    """Split `wafers` wafers off a lot (queued or held, not running) into a new lot
    `child_lot_id` at the same step: e.g. to release the good wafers of a held lot or run an
    engineering split. The child keeps the parent's order, priority, due date and holds."""

    lot_id: Id
    child_lot_id: Id
    wafers: Wafers
    reason: Id
    by: Id


class MergeLot(_Command, frozen=True, kw_only=True, tag="merge_lot"):
    """Merge a lot into another at the same step of the same route (neither running nor
    held, of the same production order, priority and due date): its wafers join
    `into_lot_id` and it leaves the WIP."""

    lot_id: Id
    into_lot_id: Id
    reason: Id
    by: Id


class CompleteStep(_Command, frozen=True, kw_only=True, tag="complete_step"):
    """Disposition of a lot whose completion was lost (held, hold kind completion_lost):
    the engineer verified on the tool that the step ran, and the lot goes on as if the
    tool had reported its end. ok: the lot moves on; not ok: it is non-conforming (the
    step's rework route, else held "nonconforming"). To run the step again instead,
    release the lot (release_lot).
    """

    lot_id: Id
    reason: Id
    by: Id
    ok: bool = True


class ReleaseTool(_Command, frozen=True, kw_only=True, tag="release_tool"):
    """Disposition of a tool inhibit (an SPC reaction plan): the tool may run again.

    `inhibit` names one inhibit as published in tool_inhibit_changed ("spc:<chart>",
    "spc:<chart>@<chamber>"); "" lifts every inhibit but the recipe ones, which lift
    themselves when the tool reports an approved body.
    """

    tool_id: Id
    reason: Id
    by: Id
    inhibit: str = ""


class ApproveRecipe(_Command, frozen=True, kw_only=True, tag="approve_recipe"):
    """Engineering change: this recipe version, with this body checksum, may run."""

    recipe_id: Id
    version: Annotated[int, Meta(ge=1)]
    checksum: Sha256  # sha256 hex of the recipe body


class QualifyTool(_Command, frozen=True, kw_only=True, tag="qualify_tool"):
    tool_id: Id
    recipe_id: Id


class DisqualifyTool(_Command, frozen=True, kw_only=True, tag="disqualify_tool"):
    tool_id: Id
    recipe_id: Id
    reason: str = ""


Command = (DefineRoute | DefineProduct | DefineTool | CreateLot | UpdateLot | HoldLot
           | ReleaseLot | CompleteStep | ScrapLot | ScrapWafers | SplitLot | MergeLot
           | ReleaseTool | ApproveRecipe | QualifyTool | DisqualifyTool)
COMMANDS: tuple[type, ...] = (DefineRoute, DefineProduct, DefineTool, CreateLot, UpdateLot,
                              HoldLot, ReleaseLot, CompleteStep, ScrapLot, ScrapWafers,
                              SplitLot, MergeLot, ReleaseTool, ApproveRecipe, QualifyTool,
                              DisqualifyTool)

_command_decoder = msgspec.json.Decoder(Command)


def decode_command(raw: bytes | str) -> Command:
    """Decode one ERP command; raise msgspec.DecodeError / ValidationError when invalid."""
    return _command_decoder.decode(raw)


def json_schema() -> dict:
    """Return one JSON Schema document with every outbound event and every ERP command."""
    types = [Envelope, *OUT_EVENTS, *COMMANDS]
    (schemas, components) = msgspec.json.schema_components(
        types, ref_template="#/$defs/{name}")
    events = {t.TYPE: {"stream": t.STREAM, "data": s}
              for t, s in zip(OUT_EVENTS, schemas[1:1 + len(OUT_EVENTS)], strict=True)}
    commands = {t.__struct_config__.tag: s
                for t, s in zip(COMMANDS, schemas[1 + len(OUT_EVENTS):], strict=True)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fabd event contract",
        "version": SCHEMA_VERSION,
        "envelope": schemas[0],
        "events": events,
        "commands": commands,
        "$defs": components,
    }
