"""The in-memory state of record: products, routes, tools, lots, recipes, and their transitions.

`MesState` is the only writer of lots and tools (STYLE: one writer of state).
Every transition validates first, then mutates, then emits its outbound
events; nothing is mutated when it raises. Mutations and events collect in a
pending batch that `daemon.writer.Writer` commits to the store in ONE
transaction, so a state change and its events are durable together or not at
all. A caller that needs durability (an ERP command before XACK, an equipment
event before S6F12) awaits `Writer.durable()` after the transition.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

import msgspec

from daemon import events as ev
from daemon.errors import FabdError

log = logging.getLogger(__name__)

QUEUED, PROCESSING, HELD, COMPLETED, SCRAPPED, MERGED = (
    "queued", "processing", "held", "completed", "scrapped", "merged")
ACTIVE_STATES = frozenset((QUEUED, PROCESSING, HELD))


class MesError(FabdError):
    """A transition or command that the state of record refuses; nothing changed."""

    code = "invalid"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnknownEntity(MesError):
    """The command names a lot, product, route, tool or recipe fabd does not know."""


class IllegalTransition(MesError):
    """The entity exists but is not in a state that allows this change."""

    code = "illegal_transition"


# ------------------------------------------------------------------ entities
# Mutable structs (state, not config): encoded to the store as JSON bodies.


class Hold(msgspec.Struct, kw_only=True):
    reason: str
    by: str
    ts: float
    kind: str = ""  # "queue_time": enforcement held the lot for an exceeded queue-time window;
    #                 "completion_lost": its tool no longer ran it and never reported its end
    # completion_lost: the tool whose late completion settles the hold; cleared when the lot
    # is tracked in again (an end of the lost run then no longer says where the lot is)
    tool_id: str = ""
    at_step: str = ""  # a future hold: placed when the lot arrives at this step of its route


class ReturnPoint(msgspec.Struct, kw_only=True):
    route_id: str
    step_index: int


class Product(msgspec.Struct, kw_only=True):
    product_id: str
    route_id: str
    description: str = ""


class Route(msgspec.Struct, kw_only=True):
    route_id: str
    steps: list[ev.RouteStep]


class Recipe(msgspec.Struct, kw_only=True):
    recipe_id: str
    versions: dict[int, str] = {}  # approved version -> body sha256


class Tool(msgspec.Struct, kw_only=True):
    tool_id: str
    tool_group: str = ""
    e10_state: str = "non_scheduled"
    control_state: str = ""
    connected: bool = False
    alarms: list[int] = []
    inhibits: dict[str, str] = {}  # inhibit key ("recipe:<id>", "spc:<chart>") -> reason
    verified: dict[str, str] = {}  # recipe id -> checksum the tool was seen to hold
    qualified: list[str] = []  # recipe ids this tool may run
    lot_id: str = ""  # the lot processing now


class Lot(msgspec.Struct, kw_only=True):
    lot_id: str
    production_order: str
    product_id: str
    route_id: str
    step_index: int
    step_id: str
    wafers: int
    priority: int = 50
    due: dt.datetime | None = None
    state: str = QUEUED
    holds: list[Hold] = []
    arrived_ts: float = 0.0  # when it arrived at its current step (queue time)
    tool_id: str = ""  # while processing
    started_ts: float = 0.0  # while processing: when it started on tool_id
    rework: list[ReturnPoint] = []  # where to return after each nested rework route
    created_ts: float = 0.0
    # arrived_ts of the visit whose exceeded queue time an engineer dispositioned (released)
    qt_waived_arrival: float = -1.0
    # queue-time limit (s) of the step the lot left to come here, the window that closes when
    # this step starts: the route's previous step, or the last step of a rework route the lot
    # returns from; 0 none (a first step, a rework route entered); -1 not recorded (a lot
    # stored by an older fabd: the route's previous step); after a merge, from the earlier
    # arrival to the earlier of the two lots' deadlines
    qt_limit_s: float = -1.0
    # it ended the last step of its route while held: it completes when its holds are released
    route_done: bool = False
    future_holds: list[Hold] = []  # placed when the lot arrives at their at_step
    merged_into: str = ""  # state merged: the lot its wafers joined (merge_lot)
    split_from: str = ""  # split off this lot (split_lot) ...
    split_ts: float = 0.0  # ... at this time


KINDS: dict[str, type] = {"product": Product, "route": Route, "recipe": Recipe, "tool": Tool,
                          "lot": Lot}
_encode = msgspec.json.Encoder().encode
_DECODERS = {kind: msgspec.json.Decoder(t) for kind, t in KINDS.items()}


_iso_second = [-1, ""]  # (unix second, "YYYY-MM-DDTHH:MM:SS") of the last call


def _iso(ts: float) -> str:
    """Format UTC seconds as ISO 8601 with milliseconds ("2026-11-25T16:00:00.123Z")."""
    sec = int(ts)
    if sec != _iso_second[0]:  # events come in bursts within one second: format that part once
        _iso_second[0], _iso_second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_iso_second[1]}.{int((ts - sec) * 1000):03d}Z"


class Batch(msgspec.Struct, kw_only=True):
    """What changed since the last commit: entity bodies, event rows, applied command ids."""

    entities: list[tuple[str, str, bytes]]  # (kind, id, JSON body)
    events: list[tuple[int, str, int, str, str, str, bytes]]  # (jseq, stream, seq, type, eid, ts, data)
    commands: list[tuple[str, float]]  # (command id, ts)


_RUNS_KEPT = 32  # a tool's last runs lot_at() can name (hours of a tool's work)


class MesState:
    """The state of record in memory, its transitions, and the pending batch for the writer."""

    def __init__(self, instance_id: str = "fabd", clock: Callable[[], float] = time.time) -> None:
        self.instance_id = instance_id  # makes eids globally unique: "<instance>-<jseq>"
        self.clock = clock
        self.products: dict[str, Product] = {}
        self.routes: dict[str, Route] = {}
        self.recipes: dict[str, Recipe] = {}
        self.tools: dict[str, Tool] = {}
        self.lots: dict[str, Lot] = {}  # every lot ever (completed and scrapped ones too)
        self._active: dict[str, Lot] = {}  # lots still in the WIP: what the tick iterates
        # Each tool's lots processing now, in start order (a batch has several; rebuilt at
        # load); and, in memory only, for lot_at() and step_at(), each tool's last runs
        # (lot, step, started, ended)
        self._running: dict[str, list[str]] = {}
        self._children: dict[str, list[str]] = {}  # lot -> lots split off it, in split order
        self._runs: dict[str, deque[tuple[str, str, float, float]]] = {}
        self.applied: set[str] = set()
        self.jseq = 0  # journal sequence across all streams (the outbox order)
        self.seq: dict[str, int] = dict.fromkeys(ev.STREAMS, 0)  # per-stream entry seq
        self._dirty: dict[tuple[str, str], object] = {}
        self._events: list[tuple[int, str, int, str, str, str, bytes]] = []
        self._commands: list[tuple[str, float]] = []
        self._unexpected_logged: dict[str, tuple[float, int]] = {}  # tool -> (logged at, since)
        self.listeners: list[Callable[[str, str], None]] = []  # (kind, id) after each change
        self.on_pending: Callable[[int], None] | None = None  # writer wake-up (pending events)
        # (lot, tool, step it left, arrived at that step, ended at) after every step's end,
        # whichever way it ended (the tool, a late completion, complete_step): the metrics
        self.on_step_end: Callable[[Lot, str, str, float, float], None] | None = None
        self.on_lot_completed: Callable[[Lot, float], None] | None = None  # (lot, at): metrics
        self.on_wafers_scrapped: Callable[[Lot, int], None] | None = None  # (lot, n): metrics

    # ------------------------------------------------------------ persistence

    def load(self, entities: Iterable[tuple[str, str, bytes]], seqs: dict[str, int], jseq: int,
             applied: Iterable[str]) -> None:
        """Rebuild the state from the store's rows (on start, before anything runs)."""
        for kind, _id, body in entities:
            obj = _DECODERS[kind].decode(body)
            getattr(self, kind + "s")[_id] = obj
            if kind == "lot" and obj.state in ACTIVE_STATES:
                self._active[_id] = obj
                if obj.state == PROCESSING and obj.tool_id:
                    self._running.setdefault(obj.tool_id, []).append(_id)
            if kind == "lot" and obj.split_from:
                self._children.setdefault(obj.split_from, []).append(_id)
        self.seq.update(seqs)
        self.jseq = jseq
        self.applied.update(applied)

    def has_pending(self) -> bool:
        return bool(self._dirty or self._events or self._commands)

    def pending_events(self) -> int:
        return len(self._events)

    def take_batch(self) -> Batch:
        """Hand the pending changes to the writer (encoded now, so later changes don't leak in)."""
        entities = [(kind, _id, _encode(obj)) for (kind, _id), obj in self._dirty.items()]
        batch = Batch(entities=entities, events=self._events, commands=self._commands)
        self._dirty = {}
        self._events = []
        self._commands = []
        return batch

    def _touch(self, kind: str, _id: str, obj: object) -> None:
        if not self._dirty and self.on_pending is not None:
            self.on_pending(0)  # the first change of a batch wakes the writer
        self._dirty[(kind, _id)] = obj
        for listener in self.listeners:
            listener(kind, _id)

    def emit(self, event: ev.OutEvent, ts: float | None = None) -> int:
        """Append an outbound event to the pending batch; return its journal seq."""
        stream = event.STREAM
        jseq = self.jseq = self.jseq + 1
        seqs = self.seq
        seq = seqs[stream] = seqs[stream] + 1
        pending = self._events
        pending.append((jseq, stream, seq, event.TYPE, f"{self.instance_id}-{jseq}",
                        _iso(self.clock() if ts is None else ts), _encode(event)))
        if self.on_pending is not None:
            self.on_pending(len(pending))
        return jseq

    # ------------------------------------------------------------ read API

    def step_of(self, lot: Lot) -> ev.RouteStep:
        """Return the route step a lot is at."""
        return self.routes[lot.route_id].steps[lot.step_index]

    def active_lots(self) -> list[Lot]:
        """Lots still in the WIP (queued, processing, held), without the finished ones.

        A list (a copy): callers may complete or scrap lots while they walk it.
        """
        return list(self._active.values())

    def queued_by_step(self) -> dict[tuple[str, str], list[Lot]]:
        """Lots waiting (queued, not held) per (route id, step id), oldest arrival first."""
        out: dict[tuple[str, str], list[Lot]] = defaultdict(list)
        for lot in self._active.values():
            if lot.state == QUEUED:
                out[(lot.route_id, lot.step_id)].append(lot)
        for lots in out.values():
            lots.sort(key=lambda lot: lot.arrived_ts)
        return dict(out)

    def holds(self) -> dict[str, list[Hold]]:
        """Return the holds of every lot that has one."""
        return {lot.lot_id: list(lot.holds) for lot in self._active.values() if lot.holds}

    def wip_counts(self) -> list[ev.WipCount]:
        """Lots and wafers per product and step, for every lot still in the WIP."""
        acc: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for lot in self.active_lots():
            c = acc[(lot.product_id, lot.step_id)]
            c[0] += 1
            c[1] += lot.wafers
        return [ev.WipCount(product_id=p, step_id=s, lots=n, wafers=w)
                for (p, s), (n, w) in sorted(acc.items())]

    def check_track_in(self, lot_id: str, tool_id: str) -> tuple[str, str] | None:
        """Return (code, detail) why a lot may not start on a tool now, or None when it may."""
        lot = self.lots.get(lot_id)
        if lot is None:
            return "unknown_lot", f"lot {lot_id} is not known"
        tool = self.tools.get(tool_id)
        if tool is None:
            return "unknown_tool", f"tool {tool_id} is not known"
        if lot.holds or lot.state == HELD:
            return "lot_held", f"lot {lot_id} is on hold: {lot.holds[0].reason if lot.holds else ''}"
        if lot.state != QUEUED:
            return "lot_not_queued", f"lot {lot_id} is {lot.state}"
        step = self.step_of(lot)
        if tool.tool_group != step.tool_group:
            return "wrong_tool_group", f"step {step.step_id} runs on {step.tool_group}, tool is {tool.tool_group}"
        if step.recipe_id not in tool.qualified:
            return "not_qualified", f"tool {tool_id} is not qualified for {step.recipe_id}"
        approved = self.recipes.get(step.recipe_id)
        checksum = approved.versions.get(step.recipe_version) if approved else None
        if checksum is None:
            return "recipe_not_approved", f"{step.recipe_id} v{step.recipe_version} is not approved"
        seen = tool.verified.get(step.recipe_id)
        if seen is not None and seen != checksum:
            return "recipe_mismatch", f"tool holds {seen[:12]}, approved is {checksum[:12]}"
        if tool.inhibits:
            key, reason = next(iter(tool.inhibits.items()))
            return "tool_inhibited", f"{key}: {reason}"
        return None

    # ------------------------------------------------------------ ERP commands

    def apply_command(self, cmd: ev.Command) -> bool:
        """Apply one validated ERP command; False when its id was applied before (a duplicate)."""
        if cmd.command_id in self.applied:
            return False
        match cmd:
            case ev.DefineRoute():
                self.define_route(cmd.route_id, cmd.steps)
            case ev.DefineProduct():
                self.define_product(cmd.product_id, cmd.route_id, cmd.description)
            case ev.DefineTool():
                self.define_tool(cmd.tool_id, cmd.tool_group)
            case ev.CreateLot():
                self.create_lot(cmd.lot_id, cmd.production_order, cmd.product_id, cmd.wafers,
                                cmd.priority, cmd.due)
            case ev.UpdateLot():
                self.update_lot(cmd.lot_id, cmd.reason, cmd.by, priority=cmd.priority,
                                due=cmd.due, production_order=cmd.production_order)
            case ev.HoldLot() if cmd.at_step:
                self.future_hold(cmd.lot_id, cmd.reason, cmd.by, cmd.at_step)
            case ev.HoldLot():
                self.hold(cmd.lot_id, cmd.reason, cmd.by)
            case ev.ReleaseLot():
                self.release(cmd.lot_id, cmd.reason, cmd.by, cmd.hold_reason)
            case ev.CompleteStep():
                self.complete_step(cmd.lot_id, cmd.reason, cmd.by, cmd.ok)
            case ev.ScrapLot():
                self.scrap(cmd.lot_id, cmd.reason, cmd.by)
            case ev.ScrapWafers():
                self.scrap_wafers(cmd.lot_id, cmd.wafers, cmd.reason, cmd.by)
            case ev.SplitLot():
                self.split_lot(cmd.lot_id, cmd.child_lot_id, cmd.wafers, cmd.reason, cmd.by)
            case ev.MergeLot():
                self.merge_lot(cmd.lot_id, cmd.into_lot_id, cmd.reason, cmd.by)
            case ev.ReleaseTool():
                self.release_tool(cmd.tool_id, cmd.reason, cmd.by, cmd.inhibit)
            case ev.ApproveRecipe():
                self.approve_recipe(cmd.recipe_id, cmd.version, cmd.checksum)
            case ev.QualifyTool():
                self.qualify(cmd.tool_id, cmd.recipe_id, True)
            case ev.DisqualifyTool():
                self.qualify(cmd.tool_id, cmd.recipe_id, False)
        self.applied.add(cmd.command_id)
        self._commands.append((cmd.command_id, self.clock()))
        return True

    # ------------------------------------------------------------ master data

    def define_route(self, route_id: str, steps: list[ev.RouteStep]) -> Route:
        """Create or replace a route (lots on it stay at their step, found by its step id)."""
        ids = [s.step_id for s in steps]
        if len(set(ids)) != len(ids):
            raise MesError(f"route {route_id}: step ids repeat", "invalid")
        for s in steps:
            if s.batch_max_lots < s.batch_min_lots:
                raise MesError(f"route {route_id} step {s.step_id}: batch_max_lots < batch_min_lots")
            if s.rework_route_id and s.rework_route_id not in self.routes:
                raise UnknownEntity(f"route {route_id} step {s.step_id}: rework route "
                                    f"{s.rework_route_id} is not defined", "unknown_route")
        old = self.routes.get(route_id)
        # A lot keeps the step it is at (and, in rework, the step it returns to) by step id:
        # a step inserted or removed before it must not move it to another step (its record
        # would name one step while it runs another's recipe, out of sequence).
        moves: list[tuple[Lot, ReturnPoint | None, int]] = []
        if old is not None:
            position = {step_id: i for i, step_id in enumerate(ids)}
            lacking = []
            for lot in self.active_lots():
                points = [(None, lot.step_index)] if lot.route_id == route_id else []
                points += [(b, b.step_index) for b in lot.rework if b.route_id == route_id]
                for back, index in points:
                    step_id = old.steps[index].step_id
                    if step_id not in position:
                        lacking.append(f"{lot.lot_id} ({step_id})")
                    elif position[step_id] != index:
                        moves.append((lot, back, position[step_id]))
                if self._main_route(lot) == route_id:
                    lacking += [f"{lot.lot_id} (future hold {h.reason!r} at {h.at_step})"
                                for h in lot.future_holds if h.at_step not in position]
            if lacking:
                raise IllegalTransition(f"route {route_id}: lots are at (or in rework will "
                                        f"return to, or are to be held at) steps the new "
                                        f"route lacks: "
                                        f"{', '.join(lacking)}")
        for lot, back, index in moves:
            if back is None:
                lot.step_index = index
            else:
                back.step_index = index
            self._touch("lot", lot.lot_id, lot)
        route = Route(route_id=route_id, steps=list(steps))
        self.routes[route_id] = route
        self._touch("route", route_id, route)
        return route

    def define_product(self, product_id: str, route_id: str, description: str = "") -> Product:
        """Create or replace a product and the route its new lots start on."""
        if route_id not in self.routes:
            raise UnknownEntity(f"product {product_id}: route {route_id} is not defined",
                                "unknown_route")
        product = Product(product_id=product_id, route_id=route_id, description=description)
        self.products[product_id] = product
        self._touch("product", product_id, product)
        return product

    def define_tool(self, tool_id: str, tool_group: str) -> Tool:
        """Create a tool or move it to another tool group."""
        tool = self.tools.get(tool_id)
        if tool is None:
            tool = self.tools[tool_id] = Tool(tool_id=tool_id, tool_group=tool_group)
        tool.tool_group = tool_group
        self._touch("tool", tool_id, tool)
        return tool

    def approve_recipe(self, recipe_id: str, version: int, checksum: str) -> None:
        """Record an engineering change: this version with this body may run."""
        recipe = self.recipes.get(recipe_id) or Recipe(recipe_id=recipe_id, versions={})
        old = recipe.versions.get(version)
        if old is not None and old != checksum:
            raise IllegalTransition(f"recipe {recipe_id} v{version} is already approved with "
                                    f"another body; approve a new version")
        recipe.versions[version] = checksum
        self.recipes[recipe_id] = recipe
        self._touch("recipe", recipe_id, recipe)

    def qualify(self, tool_id: str, recipe_id: str, qualified: bool) -> None:
        """Qualify (or disqualify) a tool for a recipe."""
        tool = self._tool(tool_id)
        if qualified and recipe_id not in tool.qualified:
            tool.qualified.append(recipe_id)
        elif not qualified:
            if recipe_id not in tool.qualified:
                raise IllegalTransition(f"tool {tool_id} is not qualified for {recipe_id}")
            tool.qualified.remove(recipe_id)
        self._touch("tool", tool_id, tool)

    # ------------------------------------------------------------ lots

    def create_lot(self, lot_id: str, production_order: str, product_id: str, wafers: int,
                   priority: int = 50, due: dt.datetime | None = None) -> Lot:
        """Start a lot at the first step of its product's route."""
        self._check_new_lot_id(lot_id)
        product = self.products.get(product_id)
        if product is None:
            raise UnknownEntity(f"lot {lot_id}: product {product_id} is not defined",
                                "unknown_product")
        route = self.routes[product.route_id]
        now = self.clock()
        lot = Lot(lot_id=lot_id, production_order=production_order, product_id=product_id,
                  route_id=route.route_id, step_index=0, step_id=route.steps[0].step_id,
                  wafers=wafers, priority=priority, due=due, arrived_ts=now, created_ts=now,
                  qt_limit_s=0.0)
        self.lots[lot_id] = self._active[lot_id] = lot
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotCreated(lot_id=lot_id, product_id=product_id, step_id=lot.step_id,
                                wafers=wafers, production_order=production_order,
                                route_id=route.route_id, priority=priority, due=due), now)
        return lot

    def _check_new_lot_id(self, lot_id: str) -> None:
        if lot_id in self.lots:
            raise IllegalTransition(f"lot {lot_id} exists already", "duplicate_lot")
        if "," in lot_id or lot_id != lot_id.strip():
            # tools report a batch as its lot ids comma-separated (and trimmed): such a lot
            # id could never be tracked in or out
            raise MesError(f"lot id {lot_id!r} has a comma or leading/trailing blanks",
                           "invalid_field")

    def split_lot(self, lot_id: str, child_id: str, wafers: int, reason: str, by: str) -> Lot:
        """Split wafers off a lot (queued or held) into a new lot at the same step."""
        parent = self._active_lot(lot_id)
        self._check_new_lot_id(child_id)
        if parent.state == PROCESSING:
            raise IllegalTransition(f"lot {lot_id} is running on {parent.tool_id}: split it "
                                    "when the step has ended")
        if self._lost_on(parent, None) is not None:
            raise IllegalTransition(f"lot {lot_id}'s last run was not reported: settle it "
                                    "(complete_step or release_lot) before splitting")
        if wafers >= parent.wafers:
            raise IllegalTransition(f"lot {lot_id} has {parent.wafers} wafers: splitting "
                                    f"{wafers} off leaves none")
        child = msgspec.convert(msgspec.to_builtins(parent), Lot)   # a deep copy
        child.lot_id, child.wafers = child_id, wafers
        child.split_from, child.split_ts = lot_id, self.clock()
        self._children.setdefault(lot_id, []).append(child_id)
        parent.wafers -= wafers
        self.lots[child_id] = self._active[child_id] = child
        self._touch("lot", lot_id, parent)
        self._touch("lot", child_id, child)
        self.emit(ev.LotSplit(lot_id=child_id, product_id=child.product_id,
                              step_id=child.step_id, wafers=wafers, parent_lot_id=lot_id,
                              parent_wafers=parent.wafers,
                              production_order=child.production_order, reason=reason, by=by))
        log.info("lot %s: %d wafers split off %s at %s (%d left): %s (by %s)", child_id, wafers,
                 lot_id, child.step_id, parent.wafers, reason, by)
        return child

    def merge_lot(self, lot_id: str, into_id: str, reason: str, by: str) -> None:
        """Merge a lot into another at the same step: its wafers join that lot."""
        lot, into = self._active_lot(lot_id), self._active_lot(into_id)
        if lot is into:
            raise IllegalTransition(f"lot {lot_id} cannot be merged into itself")
        for x in (lot, into):
            if x.state == PROCESSING or x.holds:
                raise IllegalTransition(
                    f"lot {x.lot_id} is {x.state}"
                    f"{' (' + ', '.join(h.reason for h in x.holds) + ')' if x.holds else ''}: "
                    "merge lots that wait, unheld")
        where = [(x.product_id, x.route_id, x.step_index,
                  [(b.route_id, b.step_index) for b in x.rework]) for x in (lot, into)]
        if where[0] != where[1]:
            raise IllegalTransition(f"lots {lot_id} ({lot.product_id} at {lot.step_id}) and "
                                    f"{into_id} ({into.product_id} at {into.step_id}) are not "
                                    "at the same step of the same product and route")
        # the merged wafers would silently take the other lot's order (the ERP delivers them
        # to it), priority and due date (an expedite lost): the ERP decides first
        differ = [k for k in ("production_order", "priority", "due")
                  if getattr(lot, k) != getattr(into, k)]
        if differ:
            raise IllegalTransition(
                f"lots {lot_id} and {into_id} differ in {', '.join(differ)} ("
                + "; ".join(f"{getattr(lot, k)} vs {getattr(into, k)}" for k in differ)
                + "): update_lot one of them first")
        if lot.future_holds:
            raise IllegalTransition(f"lot {lot_id} is to be held at "
                                    f"{', '.join(h.at_step for h in lot.future_holds)}: "
                                    "withdraw its future holds first")
        # The lot waits since the earlier arrival and must start by the earlier of the two
        # queue-time deadlines: one back from rework may have another window, none, or one
        # an engineer waived, and each lot's wafers keep theirs.
        deadline = min(self.qt_deadline(lot), self.qt_deadline(into))
        into.arrived_ts = min(lot.arrived_ts, into.arrived_ts)
        into.qt_limit_s = 0.0 if deadline == math.inf else deadline - into.arrived_ts
        into.qt_waived_arrival = -1.0
        into.wafers += lot.wafers
        lot.state, lot.merged_into = MERGED, into_id
        self._active.pop(lot_id, None)
        self._touch("lot", lot_id, lot)
        self._touch("lot", into_id, into)
        self.emit(ev.LotMerged(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                               wafers=lot.wafers, into_lot_id=into_id, into_wafers=into.wafers,
                               reason=reason, by=by))
        log.info("lot %s merged into %s at %s (%d wafers now): %s (by %s)", lot_id, into_id,
                 lot.step_id, into.wafers, reason, by)

    def qt_deadline(self, lot: Lot) -> float:
        """When the lot must start its step (queue time: `Lot.qt_limit_s`, the route's previous
        step, or the last step of the rework route it returns from); inf: no window, or one
        an engineer waived."""
        limit_s = lot.qt_limit_s
        if limit_s < 0:   # not recorded (stored by an older fabd): the route's previous step
            limit_s = (self.routes[lot.route_id].steps[lot.step_index - 1].queue_time_limit_s
                       if lot.step_index > 0 else 0.0)
        if limit_s <= 0 or lot.qt_waived_arrival == lot.arrived_ts:
            return math.inf
        return lot.arrived_ts + limit_s

    def update_lot(self, lot_id: str, reason: str, by: str, *,
                   priority: int | msgspec.UnsetType = msgspec.UNSET,
                   due: dt.datetime | msgspec.UnsetType | None = msgspec.UNSET,
                   production_order: str | msgspec.UnsetType = msgspec.UNSET) -> list[str]:
        """Change a lot's priority, due date or production order (what is left UNSET stays);
        return the fields that changed (none: nothing is published)."""
        lot = self._active_lot(lot_id)
        given = {"priority": priority, "due": due, "production_order": production_order}
        given = {k: v for k, v in given.items() if v is not msgspec.UNSET}
        if not given:
            raise MesError(f"update_lot for {lot_id} changes nothing: give priority, due or "
                           "production_order", "invalid_field")
        changed = [k for k, v in given.items() if getattr(lot, k) != v]
        if not changed:
            log.info("lot %s: update_lot by %s changes nothing (%s)", lot_id, by,
                     ", ".join(f"{k} already {v}" for k, v in given.items()))
            return []
        for k in changed:
            setattr(lot, k, given[k])
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotUpdated(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                wafers=lot.wafers, production_order=lot.production_order,
                                priority=lot.priority, due=lot.due, changed=changed,
                                reason=reason, by=by))
        log.info("lot %s: %s (by %s: %s)", lot_id,
                 ", ".join(f"{k} {given[k]}" for k in changed), by, reason)
        return changed

    def hold(self, lot_id: str, reason: str, by: str, kind: str = "", tool_id: str = "") -> None:
        """Put a hold on a lot (a processing lot finishes its step and then stays held)."""
        lot = self._active_lot(lot_id)
        if any(h.reason == reason for h in lot.holds):
            raise IllegalTransition(f"lot {lot_id} is already held for {reason}")
        now = self.clock()
        lot.holds.append(Hold(reason=reason, by=by, ts=now, kind=kind, tool_id=tool_id))
        if lot.state == QUEUED:
            lot.state = HELD
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotHeld(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                             wafers=lot.wafers, reason=reason, by=by), now)
        log.info("lot %s held at %s: %s (by %s)", lot_id, lot.step_id, reason, by)

    def future_hold(self, lot_id: str, reason: str, by: str, at_step: str) -> None:
        """Plan a hold for the lot's arrival at a step of its route (before that step runs).

        At the step the lot waits at now (not running it), it is held now."""
        lot = self._active_lot(lot_id)
        route_id = self._main_route(lot)
        ids = [s.step_id for s in self.routes[route_id].steps]
        if at_step not in ids:
            if lot.rework and any(s.step_id == at_step for s in self.routes[lot.route_id].steps):
                raise MesError(f"lot {lot_id}: step {at_step} is on the rework route "
                               f"{lot.route_id} the lot is on now; a future hold names a step "
                               f"of its route {route_id} (hold it now, or at the step it "
                               "returns to)", "unknown_step")
            raise MesError(f"lot {lot_id}: step {at_step} is not on its route {route_id}",
                           "unknown_step")
        if any(h.reason == reason for h in (*lot.holds, *lot.future_holds)):
            raise IllegalTransition(f"lot {lot_id} is already held (or to be held) for {reason}")
        # where the lot is on its route (in rework: the step it returns to and runs again)
        here, at = (lot.rework[0].step_index if lot.rework else lot.step_index), ids.index(at_step)
        if at < here or (at == here and not lot.rework and lot.state == PROCESSING):
            raise IllegalTransition(
                f"lot {lot_id} is past step {at_step} (it is {lot.state} at {lot.step_id}): "
                "hold it now (hold_lot without at_step)")
        if at == here and not lot.rework:
            self.hold(lot_id, reason, by)
            return
        lot.future_holds.append(Hold(reason=reason, by=by, ts=self.clock(), at_step=at_step))
        self._touch("lot", lot_id, lot)
        self.emit(ev.FutureHoldSet(lot_id=lot_id, product_id=lot.product_id,
                                   step_id=lot.step_id, wafers=lot.wafers, reason=reason,
                                   by=by, at_step=at_step))
        log.info("lot %s: to be held at %s: %s (by %s)", lot_id, at_step, reason, by)

    def _main_route(self, lot: Lot) -> str:
        """The route the lot follows outside rework (where its future holds are)."""
        return lot.rework[0].route_id if lot.rework else lot.route_id

    def _future_holds_due(self, lot: Lot, now: float) -> None:
        """Place the future holds of the step the lot just arrived at (on its route)."""
        if lot.rework or not lot.future_holds:
            return
        due = [h for h in lot.future_holds if h.at_step == lot.step_id]
        lot.future_holds = [h for h in lot.future_holds if h.at_step != lot.step_id]
        for h in due:
            if any(x.reason == h.reason for x in lot.holds):
                continue   # held for it already (placed by hand meanwhile)
            lot.holds.append(Hold(reason=h.reason, by=h.by, ts=now))
            self.emit(ev.LotHeld(lot_id=lot.lot_id, product_id=lot.product_id,
                                 step_id=lot.step_id, wafers=lot.wafers, reason=h.reason,
                                 by=h.by), now)
            log.info("lot %s held at %s: %s (by %s, planned)", lot.lot_id, lot.step_id,
                     h.reason, h.by)

    def release(self, lot_id: str, reason: str, by: str, hold_reason: str = "") -> None:
        """Release one hold (hold_reason) or every hold of a lot; withdraw a future hold
        (hold_reason naming it)."""
        lot = self._active_lot(lot_id)
        planned = next((h for h in lot.future_holds if h.reason == hold_reason), None)
        if (hold_reason and planned is not None
                and not any(h.reason == hold_reason for h in lot.holds)):
            lot.future_holds = [h for h in lot.future_holds if h is not planned]
            self._touch("lot", lot_id, lot)
            self.emit(ev.FutureHoldCancelled(lot_id=lot_id, product_id=lot.product_id,
                                             step_id=lot.step_id, wafers=lot.wafers,
                                             hold_reason=hold_reason, at_step=planned.at_step,
                                             reason=reason, by=by))
            log.info("lot %s: future hold %s at %s withdrawn: %s (by %s)", lot_id, hold_reason,
                     planned.at_step, reason, by)
            return
        if not lot.holds:
            raise IllegalTransition(f"lot {lot_id} is not held")
        if hold_reason:
            keep = [h for h in lot.holds if h.reason != hold_reason]
            if len(keep) == len(lot.holds):
                raise IllegalTransition(f"lot {lot_id} has no hold {hold_reason!r}")
        else:
            keep = []
        if any(h.kind == "queue_time" for h in lot.holds if h not in keep):
            # the engineer's disposition of this visit's queue-time violation: the lot may
            # run at this step now (it is not held again for the same window)
            lot.qt_waived_arrival = lot.arrived_ts
        lot.holds = keep
        if not keep and lot.state == HELD:
            lot.state = QUEUED
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotReleased(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                 wafers=lot.wafers, reason=reason, by=by, still_held=bool(keep)))
        log.info("lot %s released at %s: %s (by %s)", lot_id, lot.step_id, reason, by)
        if lot.state == QUEUED and lot.route_done:   # its last step ran: now it completes
            lot.route_done = False
            self._complete(lot, lot.step_id, self.clock())

    def scrap(self, lot_id: str, reason: str, by: str) -> None:
        """Scrap a lot: it leaves the WIP."""
        lot = self._active_lot(lot_id)
        self._free_tool(lot)
        lot.state = SCRAPPED
        self._active.pop(lot_id, None)
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotScrapped(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                 wafers=lot.wafers, reason=reason, by=by))
        log.warning("lot %s scrapped at %s: %s (by %s)", lot_id, lot.step_id, reason, by)
        if self.on_wafers_scrapped is not None:
            self.on_wafers_scrapped(lot, lot.wafers)

    def scrap_wafers(self, lot_id: str, wafers: int, reason: str, by: str) -> None:
        """Scrap some wafers of a lot; it goes on with the rest."""
        lot = self._active_lot(lot_id)
        if wafers >= lot.wafers:
            raise IllegalTransition(f"lot {lot_id} has {lot.wafers} wafers: scrapping {wafers} "
                                    "leaves none; scrap the lot (scrap_lot)")
        lot.wafers -= wafers
        self._touch("lot", lot_id, lot)
        self.emit(ev.WafersScrapped(lot_id=lot_id, product_id=lot.product_id,
                                    step_id=lot.step_id, wafers=lot.wafers, scrapped=wafers,
                                    reason=reason, by=by))
        log.warning("lot %s: %d wafers scrapped at %s, %d left: %s (by %s)", lot_id, wafers,
                    lot.step_id, lot.wafers, reason, by)
        if self.on_wafers_scrapped is not None:
            self.on_wafers_scrapped(lot, wafers)

    def track_in(self, lot_id: str, tool_id: str, recipe_id: str = "",
                 ts: float | None = None, *, held_ok: bool = False) -> None:
        """Record that a queued lot started processing on a tool.

        held_ok: the tool already runs a held lot (a hold that arrived while the start was
        in flight, or a start at the tool against the hold): the record follows the tool, and
        the hold applies when the step ends, as for a hold placed during processing.
        """
        lot = self._lot(lot_id)
        if lot.state != QUEUED and not (held_ok and lot.state == HELD):
            raise IllegalTransition(f"lot {lot_id} cannot track in: it is {lot.state}")
        tool = self.tools.get(tool_id) or self.define_tool(tool_id, "")
        for h in lot.holds:
            if h.kind == "completion_lost":
                h.tool_id = ""
        lot.route_done = False   # started again by hand: its end decides
        lot.state = PROCESSING
        lot.tool_id = tool_id
        tool.lot_id = lot_id
        lot.started_ts = self.clock() if ts is None else ts
        self._running.setdefault(tool_id, []).append(lot_id)
        self._touch("lot", lot_id, lot)
        self._touch("tool", tool_id, tool)
        self.emit(ev.LotTrackedIn(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                  wafers=lot.wafers, tool_id=tool_id, recipe_id=recipe_id), ts)

    def completes(self, lot_id: str, tool_id: str) -> bool:
        """Whether a completion reported by the tool ends the lot's step (else: unexpected).

        It does when the lot processes there, and when its end was taken for lost there (hold
        kind completion_lost naming the tool) and it has not run since: the end came late (the
        tool's "idle" at the reconnect overtook it, or the tool sent it again).
        """
        lot = self.lots.get(lot_id)
        if lot is None:
            return False
        if lot.state == PROCESSING:
            return lot.tool_id == tool_id
        return self._lost_on(lot, tool_id) is not None

    def _lost_on(self, lot: Lot, tool_id: str | None) -> Hold | None:
        """The completion_lost hold a late completion from the tool (None: any tool) settles."""
        if lot.state != HELD:
            return None
        return next((h for h in lot.holds if h.kind == "completion_lost" and h.tool_id
                     and (tool_id is None or h.tool_id == tool_id)), None)

    def track_out(self, lot_id: str, tool_id: str, ok: bool = True,
                  ts: float | None = None) -> None:
        """Record the end of processing; move the lot on (next step, rework, return, complete).

        A late end of a run taken for lost (see `completes`) also lifts that hold.
        """
        lot = self._lot(lot_id)
        lost = self._lost_on(lot, tool_id)
        if lot.state != PROCESSING and lost is None:
            raise IllegalTransition(f"lot {lot_id} cannot track out: it is {lot.state}")
        settle = None if lost is None else (
            lost.reason, f"completion arrived from {tool_id}: the step was done", "mes")
        self._end_step(lot, tool_id, ok, self.clock() if ts is None else ts, settle)

    def complete_step(self, lot_id: str, reason: str, by: str, ok: bool = True) -> None:
        """An engineer's disposition of a lost completion (ERP complete_step): the step ran.

        The lot ends its step on the tool it was taken off, as if the tool had reported it
        (ok or not), and that hold is lifted; other holds stay.
        """
        lot = self._active_lot(lot_id)
        lost = self._lost_on(lot, None)
        if lost is None:
            raise IllegalTransition(
                f"lot {lot_id} has no lost completion to settle (it is {lot.state}"
                f"{', held: ' + ', '.join(h.reason for h in lot.holds) if lot.holds else ''})")
        self._end_step(lot, lost.tool_id, ok, self.clock(), (lost.reason, reason, by))

    def _end_step(self, lot: Lot, tool_id: str, ok: bool, now: float,
                  settle: tuple[str, str, str] | None) -> None:
        """End the lot's step on the tool; settle = (hold, reason, by) of a lost completion the
        end lifts, released at the step it was held at before the lot moves on."""
        lot_id = lot.lot_id
        step_id, arrived = lot.step_id, lot.arrived_ts
        self._free_tool(lot, now)
        self.emit(ev.LotTrackedOut(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                   wafers=lot.wafers, tool_id=tool_id, ok=ok), now)
        if settle is not None:
            hold, reason, by = settle
            self.release(lot_id, reason, by, hold)
        route = self.routes[lot.route_id]
        step = route.steps[lot.step_index]
        lot.state = QUEUED
        if not ok and step.rework_route_id:
            self._enter_rework(lot, step, now)
        elif not ok:
            lot.holds.append(Hold(reason="nonconforming", by="mes", ts=now))
            self.emit(ev.LotHeld(lot_id=lot_id, product_id=lot.product_id, step_id=lot.step_id,
                                 wafers=lot.wafers, reason="nonconforming", by="mes"), now)
        else:
            self._advance(lot, route, now)
        if lot.holds and lot.state == QUEUED:
            lot.state = HELD
        self._touch("lot", lot_id, lot)
        if self.on_step_end is not None:
            self.on_step_end(lot, tool_id, step_id, arrived, now)

    def completion_lost(self, lot_id: str, tool_id: str, reason: str) -> None:
        """Take a lot off a tool that no longer runs it and never reported its end.

        Nobody knows whether the step was done: the tool is free, the lot stays at its step,
        held for an engineer (complete_step: it was done; release runs the step again).
        """
        lot = self._lot(lot_id)
        if lot.state != PROCESSING or lot.tool_id != tool_id:
            raise IllegalTransition(f"lot {lot_id} is not processing on {tool_id}: it is "
                                    f"{lot.state} on {lot.tool_id or '-'}")
        self._free_tool(lot)
        lot.state = QUEUED
        self._touch("lot", lot_id, lot)
        self.emit(ev.LotCompletionLost(lot_id=lot_id, product_id=lot.product_id,
                                       step_id=lot.step_id, wafers=lot.wafers, tool_id=tool_id))
        again = next((h for h in lot.holds if h.reason == reason), None)
        if again is not None:   # lost there before, still held for it
            again.tool_id = tool_id
            lot.state = HELD
        else:
            self.hold(lot_id, reason, "mes", "completion_lost", tool_id)

    def _complete(self, lot: Lot, step_id: str, now: float) -> None:
        lot.state = COMPLETED
        self._active.pop(lot.lot_id, None)
        self.emit(ev.LotCompleted(lot_id=lot.lot_id, product_id=lot.product_id,
                                  step_id=step_id, wafers=lot.wafers), now)
        if self.on_lot_completed is not None:
            self.on_lot_completed(lot, now)

    def _advance(self, lot: Lot, route: Route, now: float) -> None:
        from_step = lot.step_id
        lot.qt_limit_s = route.steps[lot.step_index].queue_time_limit_s
        if lot.step_index + 1 < len(route.steps):
            lot.step_index += 1
        elif lot.rework:
            back = lot.rework.pop()  # redo the step that sent the lot to rework
            lot.route_id, lot.step_index = back.route_id, back.step_index
        elif lot.holds:
            # held while it ran its last step: it stays in the WIP, held at that step, and
            # completes when released (a hold must not ship a lot)
            lot.route_done = True
            return
        else:
            self._complete(lot, from_step, now)
            return
        lot.step_id = self.routes[lot.route_id].steps[lot.step_index].step_id
        lot.arrived_ts = now
        self.emit(ev.LotMoved(lot_id=lot.lot_id, product_id=lot.product_id, step_id=lot.step_id,
                              wafers=lot.wafers, from_step_id=from_step, route_id=lot.route_id),
                  now)
        self._future_holds_due(lot, now)

    def _enter_rework(self, lot: Lot, step: ev.RouteStep, now: float) -> None:
        from_step = lot.step_id
        lot.rework.append(ReturnPoint(route_id=lot.route_id, step_index=lot.step_index))
        rework = self.routes[step.rework_route_id]
        lot.route_id, lot.step_index = rework.route_id, 0
        lot.step_id = rework.steps[0].step_id
        lot.arrived_ts = now
        lot.qt_limit_s = 0.0   # the failed step's window runs to the step after it, not here
        self.emit(ev.LotReworked(lot_id=lot.lot_id, product_id=lot.product_id,
                                 step_id=lot.step_id, wafers=lot.wafers, from_step_id=from_step,
                                 route_id=rework.route_id, return_step_id=from_step), now)

    def _free_tool(self, lot: Lot, ended: float | None = None) -> None:
        tool = self.tools.get(lot.tool_id) if lot.tool_id else None
        if lot.tool_id and lot.started_ts:
            runs = self._runs.setdefault(lot.tool_id, deque(maxlen=_RUNS_KEPT))
            runs.append((lot.lot_id, lot.step_id, lot.started_ts,
                         self.clock() if ended is None else ended))
        lot.started_ts = 0.0
        running = self._running.get(lot.tool_id)
        if running is not None and lot.lot_id in running:
            running.remove(lot.lot_id)
        if tool is not None and tool.lot_id == lot.lot_id:
            tool.lot_id = ""
            self._touch("tool", tool.tool_id, tool)
        lot.tool_id = ""

    def running_lots(self, tool_id: str) -> str:
        """The lots processing on a tool now: "" none, "L1", or "L1,L2" for a batch."""
        return ",".join(self._running.get(tool_id, ()))

    def started_at(self, lot_id: str) -> float | None:
        """When a processing lot started (None: not processing, or stored by an older fabd)."""
        lot = self.lots.get(lot_id)
        return lot.started_ts or None if lot is not None and lot.state == PROCESSING else None

    def lot_at(self, tool_id: str, ts: float) -> str:
        """The lot a tool processed at `ts` ("" for none; "L1,L2" for a batch): for data that
        arrives late with its own time, e.g. an MQTT broker's backlog after an outage, which
        belongs to the lot of its time, not to the lot processing now.

        The lots processing now from their start on, else the lots of the tool's last runs
        (kept in memory: after a restart only the lots processing now are known).
        """
        running = self._running.get(tool_id)
        if running:
            starts = [self.started_at(lot) for lot in running]
            known = [t for t in starts if t is not None]
            if len(known) < len(starts) or ts >= min(known):
                return ",".join(running)
        past = [lot for lot, _, start, end in self._runs.get(tool_id, ()) if start <= ts <= end]
        return ",".join(dict.fromkeys(past))

    def step_at(self, tool_id: str, lot_id: str, ts: float) -> str:
        """The step a lot ran on a tool at `ts` (its SPC chart): the step of the tool's run of
        it that `ts` falls in, else the step the lot is at ("" for an unknown lot)."""
        lot = self.lots.get(lot_id)
        if lot is None:
            return ""
        if lot.state != PROCESSING or lot.tool_id != tool_id:
            for run_lot, step, start, end in reversed(self._runs.get(tool_id, ())):
                if run_lot == lot_id and start <= ts <= end:
                    return step
        return lot.step_id

    def refuse_track_in(self, lot_id: str, tool_id: str, code: str, detail: str = "") -> None:
        """Publish that a lot was refused on a tool (the enforcement decided; nothing changes)."""
        lot = self.lots.get(lot_id)
        self.emit(ev.TrackInRefused(lot_id=lot_id, tool_id=tool_id,
                                    step_id=lot.step_id if lot else "", code=code, detail=detail))
        log.warning("track-in refused: lot %s on tool %s: %s %s", lot_id, tool_id, code, detail)

    # ------------------------------------------------------------ tools

    def tool_connected(self, tool_id: str, protocol: str, peer: str = "",
                       ts: float | None = None) -> None:
        tool = self._tool_auto(tool_id)
        tool.connected = True
        self._touch("tool", tool_id, tool)
        self.emit(ev.ToolConnected(tool_id=tool_id, protocol=protocol, peer=peer), ts)

    def tool_disconnected(self, tool_id: str, protocol: str, reason: str = "",
                          ts: float | None = None) -> None:
        tool = self._tool_auto(tool_id)
        tool.connected = False
        self._touch("tool", tool_id, tool)
        self.emit(ev.ToolDisconnected(tool_id=tool_id, protocol=protocol, reason=reason), ts)

    def set_tool_state(self, tool_id: str, state: str, reason: str = "",
                       ts: float | None = None) -> None:
        """Record a SEMI E10 state change (no event when the state is unchanged)."""
        tool = self._tool_auto(tool_id)
        if tool.e10_state == state:
            return
        previous, tool.e10_state = tool.e10_state, state
        self._touch("tool", tool_id, tool)
        self.emit(ev.ToolStateChanged(tool_id=tool_id, state=state, previous=previous,
                                      reason=reason), ts)

    def set_control_state(self, tool_id: str, state: str, ts: float | None = None) -> None:
        tool = self._tool_auto(tool_id)
        if tool.control_state == state:
            return
        tool.control_state = state
        self._touch("tool", tool_id, tool)
        self.emit(ev.ToolControlStateChanged(tool_id=tool_id, state=state), ts)

    def alarm(self, tool_id: str, alid: int, on: bool, text: str = "",
              ts: float | None = None) -> None:
        """Record an alarm set (on) or cleared."""
        tool = self._tool_auto(tool_id)
        if on and alid not in tool.alarms:
            tool.alarms.append(alid)
        elif not on and alid in tool.alarms:
            tool.alarms.remove(alid)
        self._touch("tool", tool_id, tool)
        event = ev.AlarmSet if on else ev.AlarmCleared
        self.emit(event(tool_id=tool_id, alid=alid, text=text), ts)

    def recipe_report(self, tool_id: str, recipe_id: str, checksum: str,
                      ts: float | None = None) -> bool:
        """Check a recipe body the tool holds against the approved versions; True when verified."""
        tool = self._tool_auto(tool_id)
        recipe = self.recipes.get(recipe_id)
        approved = dict(recipe.versions) if recipe else {}
        key = f"recipe:{recipe_id}"
        tool.verified[recipe_id] = checksum
        self._touch("tool", tool_id, tool)
        match = [v for v, c in approved.items() if c == checksum]
        if match:
            self.emit(ev.RecipeVerified(tool_id=tool_id, recipe_id=recipe_id, version=max(match),
                                        checksum=checksum), ts)
            if key in tool.inhibits:
                self.inhibit(tool_id, key, False, "recipe verified")
            return True
        self.emit(ev.RecipeMismatch(tool_id=tool_id, recipe_id=recipe_id, checksum=checksum,
                                    approved=sorted(approved.values())), ts)
        log.warning("tool %s: recipe %s body %s matches no approved version", tool_id,
                    recipe_id, checksum[:12])
        self.inhibit(tool_id, key, True, "recipe body matches no approved version")
        return False

    def inhibit(self, tool_id: str, key: str, active: bool, reason: str = "") -> None:
        """Set or clear a tool inhibit (recipe mismatch, SPC reaction plan, ...)."""
        tool = self._tool_auto(tool_id)
        if active == (key in tool.inhibits):
            return
        if active:
            tool.inhibits[key] = reason
        else:
            del tool.inhibits[key]
        self._touch("tool", tool_id, tool)
        self.emit(ev.ToolInhibitChanged(tool_id=tool_id, inhibit=key, active=active,
                                        reason=reason))

    def release_tool(self, tool_id: str, reason: str, by: str, inhibit: str = "") -> None:
        """Lift one inhibit of a tool (or every one but the recipe ones): its disposition."""
        tool = self._tool(tool_id)
        if inhibit.startswith("recipe:"):
            raise IllegalTransition(f"tool {tool_id}: a recipe inhibit lifts when the tool reports "
                                    "an approved body (fabd re-checks every minute); fix the body "
                                    "at the tool")
        if inhibit:
            if inhibit not in tool.inhibits:
                have = ", ".join(sorted(tool.inhibits)) or "none"
                raise IllegalTransition(f"tool {tool_id} has no inhibit {inhibit!r} (has: {have})")
            keys = [inhibit]
        else:
            keys = [k for k in tool.inhibits if not k.startswith("recipe:")]
            if not keys:
                raise IllegalTransition(f"tool {tool_id} has no inhibit to release")
        for key in keys:
            self.inhibit(tool_id, key, False, f"{reason} (by {by})")
        log.info("tool %s released from %s: %s (by %s)", tool_id, ", ".join(keys), reason, by)

    # ------------------------------------------------------------ quality / dispatch

    def process_summary(self, lot_id: str, tool_id: str, recipe_id: str,
                        parameters: list[ev.ParameterSummary], step_id: str | None = None,
                        ts: float | None = None) -> None:
        """Publish the process-data summary of a lot at a step."""
        lot = self.lots.get(lot_id)
        self.emit(ev.ProcessDataSummary(
            lot_id=lot_id, product_id=lot.product_id if lot else "",
            step_id=step_id if step_id is not None else (lot.step_id if lot else ""),
            tool_id=tool_id, recipe_id=recipe_id, parameters=parameters), ts)

    def spc_violation(self, chart: str, tool_id: str, parameter: str, rule: str, value: float,
                      lot_id: str = "", action: str = "", **details) -> None:
        """Publish a violation; `details` are SpcViolation's optional fields (points, test, ...)."""
        self.emit(ev.SpcViolation(chart=chart, tool_id=tool_id, parameter=parameter, rule=rule,
                                  value=value, lot_id=lot_id, action=action, **details))

    def spc_limits_changed(self, chart: str, center: float, lcl: float, ucl: float,
                           reason: str = "") -> None:
        self.emit(ev.SpcLimitsChanged(chart=chart, center=center, lcl=lcl, ucl=ucl,
                                      reason=reason))

    def dispatch_list(self, tool_id: str, lots: list[str], scores: list[float]) -> None:
        self.emit(ev.DispatchList(tool_id=tool_id, lots=lots, scores=scores))

    def process_unexpected(self, tool_id: str, lot_id: str, what: str, reason: str,
                           ts: float | None = None) -> None:
        self.emit(ev.ProcessUnexpected(tool_id=tool_id, lot_id=lot_id, what=what, reason=reason),
                  ts)
        # Every one is an event; the log gets one line per tool per minute (a misconfigured
        # tool reporting at 5 Hz must not flood the journal).
        now = time.monotonic()
        last, suppressed = self._unexpected_logged.get(tool_id, (-1e9, 0))
        if now - last >= 60.0:
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.warning("tool %s reported process %s of lot %s: %s%s", tool_id, what, lot_id,
                        reason, more)
            self._unexpected_logged[tool_id] = (now, 0)
        else:
            self._unexpected_logged[tool_id] = (last, suppressed + 1)

    def wip_snapshot(self) -> ev.WipSnapshot:
        """Emit a WIP snapshot covering every lots entry emitted so far, and return it."""
        counts = self.wip_counts()
        snap = ev.WipSnapshot(lots_seq=self.seq["lots"], total_lots=sum(c.lots for c in counts),
                              total_wafers=sum(c.wafers for c in counts), counts=counts)
        self.emit(snap)
        return snap

    # ------------------------------------------------------------ helpers

    def carrier(self, lot_id: str) -> Lot | None:
        """The lot that has a lot's wafers now: itself, or the lot it was merged into (a hold
        for data taken before the merge, e.g. SPC, must reach the wafers)."""
        lot = self.lots.get(lot_id)
        while lot is not None and lot.state == MERGED:
            lot = self.lots.get(lot.merged_into)
        return lot

    def wafers_of(self, lot_id: str, since: float) -> list[Lot]:
        """The lots that hold the wafers a lot had at `since` (a hold for data taken then,
        e.g. SPC, must reach them all): its carrier, and the carriers of the lots split off
        it (or off those, or off the lot they were merged into) since then."""
        out: dict[str, Lot] = {}
        todo, seen = deque([lot_id]), set()
        while todo:
            current = todo.popleft()
            if current in seen:
                continue
            seen.add(current)
            carrier = self.carrier(current)
            if carrier is not None:
                out.setdefault(carrier.lot_id, carrier)
                todo.append(carrier.lot_id)
            todo.extend(child for child in self._children.get(current, ())
                        if self.lots[child].split_ts >= since)
        return list(out.values())

    def run_start(self, tool_id: str, lot_id: str, ts: float) -> float | None:
        """When the run of a lot on a tool that data of time `ts` came from began (None: not
        known, e.g. a run before a restart)."""
        lot = self.lots.get(lot_id)
        if (lot is not None and lot.state == PROCESSING and lot.tool_id == tool_id
                and 0 < lot.started_ts <= ts):
            return lot.started_ts
        starts = [start for run_lot, _, start, _ in self._runs.get(tool_id, ())
                  if run_lot == lot_id and start <= ts]
        return max(starts) if starts else None

    def _lot(self, lot_id: str) -> Lot:
        lot = self.lots.get(lot_id)
        if lot is None:
            raise UnknownEntity(f"lot {lot_id} is not known", "unknown_lot")
        return lot

    def _active_lot(self, lot_id: str) -> Lot:
        lot = self._lot(lot_id)
        if lot.state not in ACTIVE_STATES:
            raise IllegalTransition(f"lot {lot_id} is {lot.state}")
        return lot

    def _tool(self, tool_id: str) -> Tool:
        tool = self.tools.get(tool_id)
        if tool is None:
            raise UnknownEntity(f"tool {tool_id} is not known", "unknown_tool")
        return tool

    def _tool_auto(self, tool_id: str) -> Tool:
        # A tool that talks before the ERP defined it is still a tool: record it (no group).
        tool = self.tools.get(tool_id)
        if tool is None:
            tool = self.tools[tool_id] = Tool(tool_id=tool_id)
        return tool


class RunningStats:
    """Welford running mean/variance with min and max, for process-data summaries."""

    __slots__ = ("m2", "max", "mean", "min", "n")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def summary(self, parameter: str) -> ev.ParameterSummary:
        sd = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return ev.ParameterSummary(parameter=parameter, n=self.n, mean=self.mean, min=self.min,
                                   max=self.max, sd=sd)
