"""After a reconnect, what the tool runs is compared with the record (over real sockets).

fabd started a lot; the HSMS link went down while the tool processed it. If the tool
finished while nobody listened and did not spool its completion (spooling off, the spool
overflowed or was purged), the record held the tool busy with that lot for ever: auto
dispatch never used the tool again and the lot sat "in process" on an empty tool. Now the
status read at the reconnect (after the spool replay) settles it: a lot the tool no
longer runs is taken off the tool and held for an engineer; a spooled completion is
applied as usual; a lot still running is left alone.

A FabCore with its GEM host session talks to a secsgem tool simulator through a TCP relay
the test cuts and restores; the bus runs against the test's redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import REGISTRY

from daemon.config import DispatchSection, EquipmentSection, FabdConfig, ServiceConfig
from daemon.core import FabCore
from daemon.mes import COMPLETED, HELD, PROCESSING
from dispatch.config import Policy
from equipment import events as dom
from equipment.gem.config import GemToolConfig
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig, ProcessState
from tests.daemon.bus_support import (
    configs,
    read_stream,
    read_stream_raw,
    send_commands,
    stop_tasks,
)
from tests.daemon.test_dispatch_auto import Fab, body, eventually, route, sha

TOOL = "ETCH01"


class Link:
    """A TCP relay between the host and the tool: `cut()` drops it and refuses reconnects
    until `restore()` (the cable pulled, then plugged back)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            tool_reader, tool_writer = await asyncio.open_connection("127.0.0.1",
                                                                     self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, tool_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            for w in (writer, tool_writer):
                w.transport.abort()
                self._open.discard(w)

        await asyncio.gather(pump(reader, tool_writer), pump(tool_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def fab_with_link(redis_url: str, tmp_path: Path, *, spool: bool = True,
                        process_time_s: float, spool_max_messages: int | None = None,
                        **gem: object) -> AsyncIterator[tuple[Fab, Link]]:
    """One auto-dispatched ETCH tool holding E1, behind a Link; route RT = one E1 step.

    `gem`: GemToolConfig values over the defaults (spool_settle_s 0.5); with a
    trace_period_s the tool is seen tracing before the fab is handed over."""
    if spool_max_messages is None:
        spool_max_messages = 10_000 if spool else 0
    sim = GemToolSim(GemToolSimConfig(tool_id=TOOL, process_time_s=process_time_s,
                                      recipes={"E1": body("E1")},
                                      spool_max_messages=spool_max_messages))
    await sim.start()
    link = Link(sim.port)
    await link.start()
    values: dict[str, object] = {"spool_settle_s": 0.5, **gem}
    gem_cfg = GemToolConfig(tool_id=TOOL, comm_retry_s=0.3,
                            hsms=HsmsConfig(host="127.0.0.1", port=link.port,
                                            t5_connect_separation_s=0.2,
                                            reconnect_backoff_max_s=0.5,
                                            linktest_interval_s=0, e37_ranges=False),
                            **values)  # type: ignore[arg-type]
    bus_cfg = configs(redis_url)
    cfg = FabdConfig(service=ServiceConfig(state_directory=str(tmp_path)),
                     redis=bus_cfg["redis"], store=bus_cfg["store"], bus=bus_cfg["bus"],
                     dispatch=DispatchSection(mode="auto", command_timeout_s=5.0,
                                              policy=Policy()),
                     equipment=EquipmentSection(hsms=[gem_cfg]))
    core = FabCore(cfg)
    session = GemHostSession(gem_cfg, core.sink)
    core.sessions[TOOL] = session
    await core.start()
    core._warm_dispatch()
    mes = core.bus.mes
    mes.define_route("RT", route(("ETCH", "E1")))
    mes.define_product("P", "RT")
    mes.approve_recipe("E1", 1, sha(body("E1")))
    mes.define_tool(TOOL, "ETCH")
    mes.qualify(TOOL, "E1", True)
    bus = core.bus
    tasks = [asyncio.create_task(bus.writer_loop(), name="bus.writer"),
             asyncio.create_task(bus.relay_loop(), name="bus.relay"),
             asyncio.create_task(bus.erp_loop(), name="erp"),
             asyncio.create_task(session.run(), name=f"hsms[{TOOL}]"),
             asyncio.create_task(core._actions_loop(), name="dispatch.actions[0]")]
    try:
        await eventually(lambda: mes.tools[TOOL].connected, what="the tool connected")
        if gem.get("trace_period_s"):
            await eventually(lambda: sim.traces_sent >= 3, what="the tool tracing")
        yield Fab(core, {TOOL: sim}, redis_url), link
    finally:
        await stop_tasks(tasks, failed_ok=True)
        await bus.close()
        await link.stop()
        await sim.stop()


async def start_lot(fab: Fab, lot_id: str) -> None:
    """Create a lot, dispatch it onto the tool, and wait until the tool reported its start."""
    sim = fab.sims[TOOL]
    starts = sim.acked.count("S6F11 CEID 3001")
    fab.mes.create_lot(lot_id, "PO", "P", 25)

    def started() -> bool:
        fab.tick()
        return fab.running_on(lot_id) == TOOL

    await eventually(started, what=f"{lot_id} started")
    await eventually(lambda: sim.acked.count("S6F11 CEID 3001") > starts,
                     what=f"the tool's start of {lot_id} acknowledged")


async def drop_link(fab: Fab, link: Link) -> int:
    """Cut the link; return the session's connect count, once fabd saw the tool go."""
    session = fab.core.sessions[TOOL]
    connects = session.state.connects_total
    link.cut()
    await eventually(lambda: not fab.mes.tools[TOOL].connected, what="fabd saw the tool go")
    return connects


async def restore_link(fab: Fab, link: Link, connects: int) -> None:
    """Plug the link back; return once the reconnect's start-up reached the record."""
    session = fab.core.sessions[TOOL]
    link.restore()
    await session.wait_for(lambda s: s.communicating and s.connects_total > connects, 60)
    await eventually(lambda: fab.mes.tools[TOOL].connected, what="the record has it back")
    await fab.core.bus.durable()


async def finished_while_away(fab: Fab, link: Link, lot_id: str) -> int:
    """Start a lot, cut the link, wait for the tool to finish it; return the connect count."""
    await start_lot(fab, lot_id)
    connects = await drop_link(fab, link)
    await eventually(lambda: [d for d in fab.sims[TOOL].lots_done if d[0] == lot_id],
                     what=f"the tool finished {lot_id} while nobody listened")
    return connects


def of_lot(entries: list[dict], lot_id: str) -> list[dict]:
    return [e for e in entries if e["data"].get("lot_id") == lot_id]


async def test_a_completion_lost_while_the_link_was_down_frees_the_tool_and_holds_the_lot(
        redis_url, tmp_path) -> None:
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=2.0) as (fab,
                                                                                      link):
        sim = fab.sims[TOOL]
        connects = await finished_while_away(fab, link, "L1")
        # spooling off: the completion is gone (its send loop drops it after lots_done)
        await eventually(lambda: "S6F11 CEID 3002" in sim.lost, what="the completion lost")
        assert fab.running_on("L1") == TOOL              # ... so the record still has it there
        await restore_link(fab, link, connects)

        lot = fab.lot("L1")
        assert lot.state == HELD and lot.tool_id == "" and lot.step_index == 0
        [hold] = lot.holds
        assert "completion not reported by ETCH01" in hold.reason
        assert "verify the step" in hold.reason
        assert fab.mes.tools[TOOL].lot_id == ""

        # A second reconnect finds nothing more to do (no second hold, no second event).
        connects = await drop_link(fab, link)
        await restore_link(fab, link, connects)
        assert len(fab.lot("L1").holds) == 1

        # The tool is free: auto dispatch starts the next lot on it.
        await start_lot(fab, "L2")
        await eventually(lambda: fab.lot("L2").state == COMPLETED, what="L2 completed")

        lots = of_lot(await fab.lots_stream(), "L1")
        kinds = [e["type"] for e in lots]
        assert kinds.count("lot_completion_lost") == 1 and kinds.count("lot_held") == 1
        assert "lot_tracked_out" not in kinds
        assert kinds.index("lot_completion_lost") < kinds.index("lot_held")
        lost = next(e["data"] for e in lots if e["type"] == "lot_completion_lost")
        assert lost["tool_id"] == TOOL and lost["step_id"] == lot.step_id
        held = next(e["data"] for e in lots if e["type"] == "lot_held")
        assert held["reason"] == hold.reason and held["by"] == "mes"
        equipment = [e["type"] for e in read_stream(redis_url, "fab:equipment")
                     if e["data"].get("tool_id") == TOOL]
        assert equipment.count("tool_connected") >= 3 and "tool_disconnected" in equipment


async def test_a_spooled_completion_is_applied_after_the_reconnect_and_nothing_is_held(
        redis_url, tmp_path) -> None:
    async with fab_with_link(redis_url, tmp_path, spool=True, process_time_s=2.0) as (fab,
                                                                                     link):
        sim = fab.sims[TOOL]
        connects = await finished_while_away(fab, link, "L1")
        await eventually(lambda: sim.spooled >= 1, what="the completion spooled")
        await restore_link(fab, link, connects)

        lot = fab.lot("L1")
        assert lot.state == COMPLETED and not lot.holds
        assert fab.mes.tools[TOOL].lot_id == ""
        assert "S6F11 CEID 3002" in sim.acked and not sim.lost
        kinds = [e["type"] for e in of_lot(await fab.lots_stream(), "L1")]
        assert kinds.count("lot_tracked_out") == 1 and "lot_completed" in kinds
        assert "lot_held" not in kinds and "lot_completion_lost" not in kinds


async def test_a_lot_still_running_at_the_reconnect_is_left_alone_and_completes(
        redis_url, tmp_path) -> None:
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=10.0) as (fab,
                                                                                      link):
        sim = fab.sims[TOOL]
        await start_lot(fab, "L1")
        connects = await drop_link(fab, link)
        await restore_link(fab, link, connects)
        assert sim.process_state != ProcessState.IDLE, "L1 ended before the reconnect"
        assert fab.running_on("L1") == TOOL and not fab.lot("L1").holds
        assert fab.mes.tools[TOOL].lot_id == "L1"

        await eventually(lambda: fab.lot("L1").state == COMPLETED, what="L1 completed")
        assert not fab.lot("L1").holds
        kinds = [e["type"] for e in of_lot(await fab.lots_stream(), "L1")]
        assert kinds.count("lot_tracked_in") == 1 and kinds.count("lot_tracked_out") == 1
        assert "lot_held" not in kinds and "lot_completion_lost" not in kinds


async def test_a_tool_that_does_not_say_what_it_runs_is_not_reconciled_and_is_logged_once(
        redis_url, tmp_path, caplog) -> None:
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=30.0) as (fab,
                                                                                      _link):
        await start_lot(fab, "L1")
        caplog.set_level(logging.INFO, logger="fabd.core")
        for _ in range(2):   # e.g. a profile without current-lot / process-state variables
            await fab.core.sink.submit([dom.ToolConnected(tool_id=TOOL, ts=1.0,
                                                          protocol="hsms")])
        assert fab.running_on("L1") == TOOL and not fab.lot("L1").holds
        lines = [r for r in caplog.records if "cannot be checked" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.INFO
        assert TOOL in lines[0].getMessage() and "L1" in lines[0].getMessage()
        assert fab.lot("L1").state == PROCESSING


async def lost_and_held(fab: Fab, link: Link, lot_id: str) -> None:
    """Run a lot, lose its completion while the link is down, reconnect: the lot is held."""
    connects = await finished_while_away(fab, link, lot_id)
    await restore_link(fab, link, connects)
    assert fab.lot(lot_id).state == HELD and fab.lot(lot_id).holds[0].kind == "completion_lost"


async def settled(fab: Fab, lot_id: str) -> list[dict]:
    """The lot's fab:lots entries, once its lost completion was settled and it moved on."""
    lots = of_lot(await fab.lots_stream(), lot_id)
    kinds = [e["type"] for e in lots]
    at = kinds.index("lot_completion_lost")
    assert kinds[at:] == ["lot_completion_lost", "lot_held", "lot_tracked_out",
                          "lot_released", "lot_completed"]
    return lots


def unexpected(redis_url: str, lot_id: str) -> list[dict]:
    return [e["data"] for e in read_stream(redis_url, "fab:equipment")
            if e["type"] == "process_unexpected" and e["data"]["lot_id"] == lot_id]


async def test_a_completion_that_arrives_after_the_hold_completes_the_step_and_lifts_it(
        redis_url, tmp_path) -> None:
    # The tool's status read ("idle") can overtake its completion at the reconnect, or the
    # tool sends the end again later: the step did complete, nobody has to verify it.
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=2.0) as (fab,
                                                                                      link):
        sim = fab.sims[TOOL]
        await lost_and_held(fab, link, "L1")
        done_before = completions("P")
        assert await sim.resend_completion("L1")
        await eventually(lambda: fab.lot("L1").state == COMPLETED, what="L1 completed")
        assert completions("P") == done_before + 1
        assert not fab.lot("L1").holds and fab.mes.tools[TOOL].lot_id == ""

        lots = await settled(fab, "L1")
        out = next(e["data"] for e in lots if e["type"] == "lot_tracked_out")
        assert out["tool_id"] == TOOL and out["ok"] and out["step_id"] == "S1-E1"
        released = next(e["data"] for e in lots if e["type"] == "lot_released")
        assert f"completion arrived from {TOOL}" in released["reason"]
        assert released["by"] == "mes" and not released["still_held"]
        summaries = [e["data"] for e in read_stream(redis_url, "fab:quality")
                     if e["type"] == "process_data_summary" and e["data"]["lot_id"] == "L1"]
        assert [s["step_id"] for s in summaries] == ["S1-E1"]
        assert unexpected(redis_url, "L1") == []


def completions(product: str) -> float:
    return REGISTRY.get_sample_value("fabd_lots_completed_total", {"product": product}) or 0.0


async def test_the_engineer_confirms_the_step_ran_and_the_lot_moves_on_without_a_second_run(
        redis_url, tmp_path) -> None:
    # The tool's log says the run finished: re-running an etch step would scrap the wafers,
    # so the ERP sends complete_step instead of release_lot.
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=2.0) as (fab,
                                                                                      link):
        sim = fab.sims[TOOL]
        await lost_and_held(fab, link, "L1")
        done_before = completions("P")
        send_commands(redis_url, "fab", [
            {"type": "complete_step", "command_id": "c-done-1", "lot_id": "L1",
             "reason": "tool log: run ended normally", "by": "eng-kim"},
            {"type": "complete_step", "command_id": "c-done-2", "lot_id": "L1",
             "reason": "again", "by": "eng-kim"}])   # nothing left to settle
        await eventually(lambda: fab.lot("L1").state == COMPLETED, what="L1 completed")
        await eventually(lambda: read_stream_raw(redis_url, "fab:erp:dead"), what="dead letter")
        [dead] = read_stream_raw(redis_url, "fab:erp:dead")
        assert dead["code"] == "illegal_transition" and "L1 is completed" in dead["reason"]
        for _ in range(3):
            fab.tick()
        assert [d[0] for d in sim.lots_done] == ["L1"]        # run once, on the tool
        assert completions("P") == done_before + 1           # and counted as completed
        lots = await settled(fab, "L1")
        released = next(e["data"] for e in lots if e["type"] == "lot_released")
        assert (released["reason"], released["by"]) == ("tool log: run ended normally",
                                                        "eng-kim")


async def test_a_completion_for_a_lot_released_and_run_again_meanwhile_is_unexpected(
        redis_url, tmp_path) -> None:
    async with fab_with_link(redis_url, tmp_path, spool=False, process_time_s=2.0) as (fab,
                                                                                      link):
        sim = fab.sims[TOOL]
        await lost_and_held(fab, link, "L1")
        fab.mes.release("L1", "not processed: run the step", "eng")   # the engineer's call

        def done() -> bool:
            fab.tick()
            return fab.lot("L1").state == COMPLETED

        await eventually(done, what="L1 run again and completed")
        assert await sim.resend_completion("L1")   # the end of the run fabd had lost
        await eventually(lambda: unexpected(redis_url, "L1"), what="process_unexpected")
        [late] = unexpected(redis_url, "L1")
        assert late["what"] == "completed" and late["tool_id"] == TOOL
        kinds = [e["type"] for e in of_lot(await fab.lots_stream(), "L1")]
        assert kinds.count("lot_tracked_out") == 1 and kinds.count("lot_completed") == 1
        assert kinds.count("lot_released") == 1
