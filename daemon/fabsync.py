"""Keep the dispatcher's array model (dispatch.model.FabModel) in step with the state of record.

The MES state (`daemon.mes.MesState`) is the record; the FabModel is the fast
array view the numba scorer reads. MesState tells its listeners which entity
changed; `sync()` (a tick step, before dispatch) applies those changes:
master data (routes, products, recipes) rebuilds the model, a tool or lot
change updates that tool or lot in place.
"""

from __future__ import annotations

import logging
import math

from daemon import mes as mes_mod
from daemon.mes import MesState
from dispatch.model import NO_DUE_MIN, FabModel, StepSpec
from equipment.events import E10State

log = logging.getLogger("fabd.dispatch.sync")

# ERP routes count batch limits in lots; the dispatch model counts wafers.
WAFERS_PER_LOT = 25
HOT_PRIORITY = 80  # ERP priority at or above this is a hot lot (class 1), 95+ super hot (2)


def hot_class(priority: int) -> int:
    return 2 if priority >= 95 else 1 if priority >= HOT_PRIORITY else 0


def step_spec(s, position: int, *, last: bool = False) -> StepSpec:
    """Translate one ERP route step into the dispatch model's step.

    A queue-time limit runs from this step to the next one of the route; on the last step
    of a route nothing here closes it, so it is left out (the last step of a rework route
    opens the window of the step the lot returns to: the lot carries it, `Lot.qt_limit_s`).
    """
    batch = s.batch_max_lots > 1
    qt = s.queue_time_limit_s > 0 and not last
    return StepSpec(
        group=s.tool_group, recipe=s.recipe_id, recipe_version=s.recipe_version,
        ptime_min=s.process_time_s / 60.0, per="batch" if batch else "lot",
        batch_min_wafers=s.batch_min_lots * WAFERS_PER_LOT if batch else 0,
        batch_max_wafers=s.batch_max_lots * WAFERS_PER_LOT if batch else 0,
        setup=s.setup_group,
        qt_to_step=position + 1 if qt else 0,
        qt_limit_min=s.queue_time_limit_s / 60.0 if qt else 0.0,
        rework_route=s.rework_route_id,
        rework_return_step=position if s.rework_route_id else 0,  # redo the failed step
    )


class FabSync:
    """Owns the FabModel and brings it up to date with the MES state when asked."""

    def __init__(self, mes: MesState) -> None:
        self.mes = mes
        self.model = FabModel()
        self.generation = 0  # bumped on every full rebuild (the dispatcher is rebuilt with it)
        self._rebuild = True
        self._lots: set[str] = set()
        self._tools: set[str] = set()
        self._tool_setup: dict[str, str] = {}  # the setup each tool was last run with
        mes.listeners.append(self._changed)

    def _changed(self, kind: str, entity_id: str) -> None:
        if kind == "lot":
            self._lots.add(entity_id)
        elif kind == "tool":
            model, tool = self.model, self.mes.tools.get(entity_id)
            t = model.tool_index.get(entity_id)
            if t is None:
                # a new tool; one without a group (it talks before the ERP defined it) has
                # nothing to dispatch and stays out of the model until it gets one
                if tool is not None and tool.tool_group:
                    self._rebuild = True
            elif tool is None or tool.tool_group != model.group_ids[int(model.tool_group[t])]:
                self._rebuild = True   # moved to another tool group (DefineTool)
            self._tools.add(entity_id)
        else:  # route, product, recipe: master data
            self._rebuild = True

    def sync(self) -> bool:
        """Apply pending changes; return True when the model was rebuilt."""
        if self._rebuild:
            self._build()
            return True
        for tool_id in self._tools:
            self._sync_tool(tool_id)
        for lot_id in self._lots:
            self._sync_lot(lot_id)
        self._tools.clear()
        self._lots.clear()
        return False

    # -- full build ---------------------------------------------------------------------
    def _build(self) -> None:
        mes = self.mes
        model = FabModel()
        for rid, recipe in sorted(mes.recipes.items()):
            for v in sorted(recipe.versions):   # every approved version; the newest last
                model.add_recipe(rid, v, recipe.versions[v])
        for route_id, route in mes.routes.items():
            try:
                n = len(route.steps)
                model.add_route(route_id, [step_spec(s, i, last=i == n)
                                           for i, s in enumerate(route.steps, 1)])
            except Exception as exc:  # a route the model cannot take must not stop dispatch
                log.error("route %s not dispatchable: %s", route_id, exc)
        for product_id, product in mes.products.items():
            if product.route_id in model.route_index:
                model.add_product(product_id, product.route_id)
        for tool_id, tool in mes.tools.items():
            if not tool.tool_group:
                continue
            known = [r for r in tool.qualified if r in model.recipe_index]
            model.add_tool(tool_id, tool.tool_group, known, state=_e10(tool.e10_state))
        self.model = model
        self.generation += 1
        self._rebuild = False
        self._lots.clear()
        self._tools.clear()
        for tool_id in model.tool_ids:
            self._sync_tool(tool_id)
        for lot in mes.lots.values():
            if lot.state in mes_mod.ACTIVE_STATES:
                self._sync_lot(lot.lot_id)
        log.info("dispatch model built: %d tools, %d steps, %d lots", model.n_tools,
                 model.n_steps, model.n_lots)

    # -- incremental --------------------------------------------------------------------
    def _sync_tool(self, tool_id: str) -> None:
        model, tool = self.model, self.mes.tools.get(tool_id)
        if tool is None or tool_id not in model.tool_index:
            return
        model.set_tool_state(tool_id, _e10(tool.e10_state) if tool.connected
                             else E10State.UNSCHEDULED_DOWN)
        model.set_inhibit(tool_id, bool(tool.inhibits))
        model.set_qualified(tool_id, [r for r in tool.qualified if r in model.recipe_index])
        for recipe_id, checksum in tool.verified.items():
            if recipe_id in model.recipe_index:
                # the version whose approved body the tool holds (0: none of them)
                version = model.body_version(model.recipe_index[recipe_id], checksum)
                model.record_tool_recipe(tool_id, recipe_id, checksum, version)
        if not tool.lot_id:
            model.release_tool(tool_id, model.minutes(self.mes.clock()))

    def _sync_lot(self, lot_id: str) -> None:
        model, mes = self.model, self.mes
        lot = mes.lots.get(lot_id)
        ran_on = model.running_tool(lot_id)
        if lot_id in model.lot_index:
            model.remove_lot(lot_id)
        if lot is None or lot.state not in mes_mod.ACTIVE_STATES:
            return
        if lot.product_id not in model.product_index or lot.route_id not in model.route_index:
            return
        due_min = model.minutes(lot.due.timestamp()) if lot.due else NO_DUE_MIN
        model.add_lot(lot_id, lot.product_id, wafers=lot.wafers, priority=lot.priority,
                      hot=hot_class(lot.priority), due_min=due_min,
                      arrival_min=model.minutes(lot.arrived_ts), hold=bool(lot.holds))
        model.move_lot(lot_id, lot.route_id, lot.step_index + 1, model.minutes(lot.arrived_ts))
        if lot.holds:
            model.set_hold(lot_id, True, lot.holds[0].reason)
        self._queue_time(lot)
        if lot.state == mes_mod.PROCESSING and lot.tool_id in model.tool_index:
            # Busy from its start for its process time: every change to a running lot
            # (a hold, update_lot, scrap_wafers) re-adds it, and each lot of a batch
            # starts alongside the others; neither may stretch the tool's busy time.
            started = mes.started_at(lot_id)
            model.start_lot(lot_id, lot.tool_id,
                            model.minutes(lot.arrived_ts if started is None else started),
                            overlap=True, again=ran_on == lot.tool_id)

    def _queue_time(self, lot: mes_mod.Lot) -> None:
        """A lot that left a step with a queue-time limit must start this one before its
        deadline (MesState.qt_deadline)."""
        deadline = self.mes.qt_deadline(lot)
        self.model.set_queue_time(lot.lot_id, None if deadline == math.inf
                                  else self.model.minutes(deadline))


def _e10(state: str) -> E10State:
    try:
        return E10State(state)
    except ValueError:
        return E10State.NON_SCHEDULED
