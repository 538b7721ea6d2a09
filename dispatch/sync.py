"""Keep the fab model in step with what the tools report: apply domain events to the arrays.

The daemon core (the one writer of state) calls `apply_event(model, event,
now_min)` for every equipment event after it is durable; ERP commands (new
lots, holds, priorities) go through the FabModel methods directly. Events
about lots, tools or recipes the model does not know are ignored and
reported as such (returns False), never raised: the state of record may be
ahead of the model for a moment.
"""

from __future__ import annotations

import logging

from dispatch.model import FabModel, LotState
from equipment.events import (
    DomainEvent,
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
    RecipeReport,
)

__all__ = ["apply_event"]

log = logging.getLogger(__name__)


def apply_event(model: FabModel, event: DomainEvent, now_min: float) -> bool:
    """Apply one equipment event to the model; return whether the model changed."""
    tool = event.tool_id
    if tool not in model.tool_index:
        return False
    match event:
        case E10StateChanged(state=state):
            model.set_tool_state(tool, state)
            return True
        case RecipeReport(ppid=ppid, checksum=checksum):
            if ppid not in model.recipe_index:
                return False
            model.record_tool_recipe(tool, ppid, checksum)
            return True
        case ProcessStarted(lot_id=lot):
            # a start the host did not track in (local mode): record where the lot is
            if lot not in model.lot_index or int(model.lot_state[model.lot(lot)]) != LotState.WAITING:
                return False
            log.warning("tool %s started lot %s without a host track-in", tool, lot)
            model.start_lot(lot, tool, now_min)
            return True
        case ProcessCompleted(lot_id=lot, ok=ok):
            if lot not in model.lot_index or int(model.lot_state[model.lot(lot)]) != LotState.RUNNING:
                return False
            model.complete_step(lot, now_min, ok=ok)
            still_running = (model.lot_tool == model.tool(tool)) & (model.lot_state == LotState.RUNNING)
            if not still_running.any():   # the last lot of a batch is out
                model.release_tool(tool, now_min)
            if not ok:
                log.info("lot %s non-conforming on tool %s: rework", lot, tool)
            return True
    return False
