"""Reconnect reconciliation of a GEM tool that never goes quiet after S6F23.

After a reconnect the GEM session lets the tool's spool replay arrive, then reads what
the tool runs, and the core compares it with the record (a lot the tool no longer runs
is held `completion_lost`). The session waited for the tool to go quiet, counting every
message: a tool tracing faster than `spool_settle_s` (S6F1 every 50 ms) never did, the
session gave up and said nothing about what runs, and the lot whose completion the tool
lost stayed "in process" on an idle tool for ever. Now trace data does not hold the
spool up, and a spool that does not settle within `spool_drain_max_s` is reconciled
anyway (a spooled completion arriving after that still ends its step).

A FabCore with its GEM host session talks to the secsgem tool simulator through a TCP
relay the test cuts and restores; the bus runs against the test's redis-server.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from daemon.mes import HELD
from tests.daemon.test_dispatch_auto import Fab, eventually
from tests.daemon.test_reconnect_reconcile import (
    TOOL,
    Link,
    drop_link,
    fab_with_link,
    of_lot,
    restore_link,
    start_lot,
)


def tracing_fab(redis_url: str, tmp_path: Path, *, spool_max_messages: int,
                **gem: object) -> contextlib.AbstractAsyncContextManager[tuple[Fab, Link]]:
    """One auto-dispatched ETCH tool tracing every 50 ms, behind a Link; route RT = one step."""
    return fab_with_link(redis_url, tmp_path, process_time_s=2.0,
                         spool_max_messages=spool_max_messages,
                         **{"trace_period_s": 0.05, **gem})


async def test_a_fast_tracing_tool_is_reconciled_after_a_spool_replay(
        redis_url, tmp_path) -> None:
    # A one-message spool: the completion is overwritten by the E10 change that follows
    # it (E30 overwrite spool), so the tool has something to replay but not the end.
    async with tracing_fab(redis_url, tmp_path, spool_max_messages=1) as (fab, link):
        sim = fab.sims[TOOL]
        await start_lot(fab, "L1")
        connects = await drop_link(fab, link)
        await eventually(lambda: "S6F11 CEID 3002" in sim.lost, what="the completion lost")
        assert sim.spooled == 1                         # ... and something left to replay
        assert fab.running_on("L1") == TOOL
        await restore_link(fab, link, connects)
        assert sim.traces_sent and fab.core.sessions[TOOL].state.spooled_requested

        lot = fab.lot("L1")
        assert lot.state == HELD and lot.tool_id == ""
        assert [h.kind for h in lot.holds] == ["completion_lost"]
        assert fab.mes.tools[TOOL].lot_id == ""         # the tool is free for dispatch
        kinds = [e["type"] for e in of_lot(await fab.lots_stream(), "L1")]
        assert kinds.count("lot_completion_lost") == 1 and kinds.count("lot_held") == 1

