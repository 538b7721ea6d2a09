"""Auto dispatch: which lot fabd starts on which tool, over real HSMS sockets and a real Redis.

A FabCore with its GEM host sessions talks to secsgem tool simulators; the
bus (store, writer, relay) runs against the test's redis-server. The test
drives the tick itself (`Fab.tick`: sync, then dispatch, as the daemon's tick
does) and the dispatch action workers run as in the daemon, so every start
goes through recipe verification, enforcement and PP-SELECT + START.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from daemon import events as ev
from daemon.config import DispatchSection, EquipmentSection, FabdConfig, ServiceConfig
from daemon.core import FabCore
from daemon.mes import PROCESSING
from dispatch.config import Policy
from equipment.gem.config import GemToolConfig
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig
from tests.daemon.bus_support import configs, read_stream, stop_tasks
from tests.support import eventually as _eventually


async def eventually(predicate, timeout_s: float = 60.0, **kwargs):  # type: ignore[no-untyped-def]
    """tests.support.eventually with a deadline fit for a loaded 2-core machine."""
    return await _eventually(predicate, timeout_s=timeout_s, interval_s=0.05, **kwargs)


def body(recipe_id: str, version: int = 1) -> bytes:
    return f"recipe {recipe_id} v{version}\nstep1 60s\n".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Fab:
    """A running FabCore, its tool simulators, and the tick the test drives."""

    def __init__(self, core: FabCore, sims: dict[str, GemToolSim], url: str) -> None:
        self.core = core
        self.sims = sims
        self.url = url
        self.mes = core.bus.mes

    def tick(self) -> None:
        """One daemon tick's dispatch part: model <- state of record, then dispatch."""
        self.core.step_sync()
        self.core.step_dispatch()

    def lot(self, lot_id: str):  # type: ignore[no-untyped-def]
        return self.mes.lots[lot_id]

    def running_on(self, lot_id: str) -> str:
        """The tool a lot is processing on ("" while it is not)."""
        lot = self.mes.lots[lot_id]
        return lot.tool_id if lot.state == PROCESSING else ""

    async def lots_stream(self) -> list[dict]:
        await self.core.bus.drain(10.0)
        return read_stream(self.url, "fab:lots")

    async def refusals(self, lot_id: str) -> list[dict]:
        return [e["data"] for e in await self.lots_stream()
                if e["type"] == "track_in_refused" and e["data"]["lot_id"] == lot_id]


def route(*steps: tuple[str, str], process_time_s: float = 60.0,
          versions: dict[str, int] | None = None) -> list[ev.RouteStep]:
    """Route steps (tool group, recipe id), one after the other."""
    return [ev.RouteStep(step_id=f"S{i}-{recipe}", tool_group=group, recipe_id=recipe,
                         recipe_version=(versions or {}).get(recipe, 1),
                         process_time_s=process_time_s)
            for i, (group, recipe) in enumerate(steps, 1)]


@contextlib.asynccontextmanager
async def running_fab(redis_url: str, tmp_path: Path, tools: dict[str, str],
                      held: dict[str, dict[str, bytes]], steps: list[ev.RouteStep], *,
                      qualified: dict[str, list[str]] | None = None,
                      approved: dict[str, dict[int, bytes]] | None = None,
                      recipes: dict[str, bytes] | None = None, recipe_directory: str = "",
                      command_timeout_s: float = 5.0, process_time_s: float = 0.5,
                      workers: int = 4) -> AsyncIterator[Fab]:
    """Tools (id -> group) as GEM simulators holding `held` recipe bodies; one route "RT"
    (product "P"); every recipe approved at v1 with `body()` unless `approved` says otherwise;
    each tool qualified for its group's recipes unless `qualified` says otherwise."""
    sims = {t: GemToolSim(GemToolSimConfig(tool_id=t, process_time_s=process_time_s,
                                           recipes=dict(held.get(t, {})), seed=i))
            for i, t in enumerate(tools)}
    for sim in sims.values():
        await sim.start()
    hsms = [GemToolConfig(tool_id=t, comm_retry_s=0.3, spool_settle_s=0.1,
                          hsms=HsmsConfig(host="127.0.0.1", port=sims[t].port,
                                          t5_connect_separation_s=0.2,
                                          reconnect_backoff_max_s=0.5, linktest_interval_s=0,
                                          e37_ranges=False))
            for t in tools]
    bus_cfg = configs(redis_url)
    cfg = FabdConfig(service=ServiceConfig(state_directory=str(tmp_path)),
                     redis=bus_cfg["redis"], store=bus_cfg["store"], bus=bus_cfg["bus"],
                     dispatch=DispatchSection(mode="auto", command_timeout_s=command_timeout_s,
                                              recipe_directory=recipe_directory,
                                              policy=Policy()),
                     equipment=EquipmentSection(hsms=hsms))
    core = FabCore(cfg, recipes=recipes)
    for t in hsms:
        core.sessions[t.tool_id] = GemHostSession(t, core.sink)
    await core.start()
    core._warm_dispatch()
    mes = core.bus.mes
    mes.define_route("RT", steps)
    mes.define_product("P", "RT")
    for recipe in sorted({s.recipe_id for s in steps}):
        for version, data in (approved or {}).get(recipe, {1: body(recipe)}).items():
            mes.approve_recipe(recipe, version, sha(data))
    for tool, group in tools.items():
        mes.define_tool(tool, group)
        mine = (qualified or {}).get(tool, [s.recipe_id for s in steps if s.tool_group == group])
        for recipe in dict.fromkeys(mine):
            mes.qualify(tool, recipe, True)
    bus = core.bus
    tasks = [asyncio.create_task(bus.writer_loop(), name="bus.writer"),
             asyncio.create_task(bus.relay_loop(), name="bus.relay")]
    tasks += [asyncio.create_task(s.run(), name=f"hsms[{t}]") for t, s in core.sessions.items()]
    tasks += [asyncio.create_task(core._actions_loop(), name=f"dispatch.actions[{i}]")
              for i in range(workers)]
    try:
        await eventually(lambda: all(mes.tools[t].connected for t in tools),
                         what="every tool connected")
        yield Fab(core, sims, redis_url)
    finally:
        await stop_tasks(tasks, failed_ok=True)
        await bus.close()
        for sim in sims.values():
            await sim.stop()


async def test_a_busy_tool_does_not_hold_back_the_lot_an_idle_tool_of_its_group_can_run(
        redis_url, tmp_path) -> None:
    """ETCH01 runs L1 (and is near its end in the model); L2 arrives: idle ETCH02 starts it.

    The scorer counts a tool busy for less than the lookahead as available, so ETCH01 was
    handed L2 every tick, the daemon skipped it (the tool runs a lot), and ETCH02 stood idle
    next to a waiting lot until ETCH01 finished.
    """
    tools = {"ETCH01": "ETCH", "ETCH02": "ETCH"}
    held = {t: {"E1": body("E1")} for t in tools}
    async with running_fab(redis_url, tmp_path, tools, held, route(("ETCH", "E1")),
                           process_time_s=30.0) as fab:
        fab.mes.create_lot("L1", "PO", "P", 25)
        fab.tick()
        await eventually(lambda: fab.running_on("L1"), what="L1 started")
        busy = fab.running_on("L1")
        fab.mes.create_lot("L2", "PO", "P", 25)

        def l2_started() -> str:
            fab.tick()
            return fab.running_on("L2")

        tool = await eventually(l2_started, timeout_s=30.0, what="L2 started")
        assert tool != busy
        assert fab.running_on("L1") == busy   # still running: the idle tool took L2


async def test_a_tool_is_not_offered_another_lot_while_its_start_is_still_in_flight(
        redis_url, tmp_path, monkeypatch) -> None:
    """A slow tool: verifying the recipe outlasts 2 x command_timeout_s (it may take 3 x).

    The tool used to be reserved for 2 x command_timeout_s from the dispatch, so a tick after
    that queued a second start on the same tool while the first was still verifying: two
    workers could then interleave PP-SELECT and START on one tool (a lot run with the other
    lot's recipe). The tool now stays out of dispatch until its start is done.
    """
    import time
    from types import SimpleNamespace

    from daemon import core as core_mod

    clock = [time.monotonic()]
    monkeypatch.setattr(core_mod, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                          time=time.time))
    tools = {"ETCH01": "ETCH"}
    held = {"ETCH01": {"E1": body("E1"), "E2": body("E2")}}
    async with running_fab(redis_url, tmp_path, tools, held,
                           route(("ETCH", "E1"), ("ETCH", "E2")), command_timeout_s=2.0,
                           workers=1) as fab:
        sim = fab.sims["ETCH01"]
        fab.mes.create_lot("L1", "PO", "P", 25)
        fab.mes.create_lot("L2", "PO", "P", 25)
        fab.mes.track_in("L2", "ETCH01", "E1")     # L2 ran its first step: it waits for E2
        fab.mes.track_out("L2", "ETCH01")
        sim.reply_delay_s = 1.5                    # S7F19 + S7F5: 3 s of the 6 s verify budget
        lists = sim.received.count((7, 19))        # the session's own start-up listed them once
        fab.tick()
        await eventually(lambda: sim.received.count((7, 19)) > lists,
                         what="recipe verification under way")
        clock[0] += 2 * 2.0 + 1.0                  # past the old reservation, still verifying
        fab.tick()
        assert fab.core._actions.empty(), "a second start was queued for a tool mid-start"
        sim.reply_delay_s = 0.0
        await eventually(lambda: fab.running_on("L1") == "ETCH01", what="L1 started")
        assert [c[1] for c in sim.commands if c[0] == "PP-SELECT"] == [{"PPID": "E1"}]


async def test_a_refused_lot_is_not_offered_to_that_tool_every_tick_and_both_lots_run(
        redis_url, tmp_path) -> None:
    """ETCH01 holds the approved v2 body of E1, the route still runs v1: enforcement refuses.

    fabd used to hand ETCH01 the same lot again on the next tick (verify, refuse, publish,
    log: every second, for ever), so L1 never went to ETCH02, which holds v1, and ETCH01
    never ran L2 behind it. A refusal now keeps that recipe off that tool for a while.
    """
    tools = {"ETCH01": "ETCH", "ETCH02": "ETCH"}
    held = {"ETCH01": {"E1": body("E1", 2), "E2": body("E2")}, "ETCH02": {"E1": body("E1")}}
    approved = {"E1": {1: body("E1"), 2: body("E1", 2)}}
    async with running_fab(redis_url, tmp_path, tools, held,
                           route(("ETCH", "E1"), ("ETCH", "E2")), approved=approved,
                           qualified={"ETCH01": ["E1", "E2"], "ETCH02": ["E1"]},
                           process_time_s=30.0) as fab:
        fab.mes.create_lot("L1", "PO", "P", 25)
        fab.mes.create_lot("L2", "PO", "P", 25)
        fab.mes.track_in("L2", "ETCH02", "E1")     # L2 ran its first step: it waits for E2
        fab.mes.track_out("L2", "ETCH02")
        fab.tick()                                 # L1 (the older) to ETCH01: refused

        async def refused() -> list[dict]:
            return await fab.refusals("L1")

        first = await eventually(refused, what="L1 refused on ETCH01")
        assert first[0]["tool_id"] == "ETCH01" and first[0]["code"] == "recipe_version_mismatch"

        def both_running() -> bool:
            fab.tick()
            return bool(fab.running_on("L1") and fab.running_on("L2"))

        await eventually(both_running, timeout_s=30.0, what="L1 and L2 running")
        assert (fab.running_on("L1"), fab.running_on("L2")) == ("ETCH02", "ETCH01")
        assert len(await fab.refusals("L1")) == 1


async def test_the_body_downloaded_is_the_version_the_step_names(redis_url, tmp_path) -> None:
    """recipe_directory holds E1.v1 and E1.v2 (an engineering change approved ahead of the
    route, which still names v1); ETCH01 lacks E1. fabd used to key the directory by recipe
    id, so the last file won: it downloaded v2, enforcement refused it (v1 step, v2 body),
    and the tool, now holding "E1", never got v1."""
    bodies = tmp_path / "recipes"
    bodies.mkdir()
    for v in (1, 2):
        (bodies / f"E1.v{v}").write_bytes(body("E1", v))
    approved = {"E1": {1: body("E1"), 2: body("E1", 2)}}
    async with running_fab(redis_url, tmp_path, {"ETCH01": "ETCH"}, {}, route(("ETCH", "E1")),
                           approved=approved, recipe_directory=str(bodies)) as fab:
        fab.mes.create_lot("L1", "PO", "P", 25)

        def started() -> str:
            fab.tick()
            return fab.running_on("L1")

        assert await eventually(started, timeout_s=30.0, what="L1 started") == "ETCH01"
        assert fab.sims["ETCH01"].recipes["E1"] == body("E1", 1)
        assert await fab.refusals("L1") == []


async def test_a_tool_inhibited_for_a_recipe_body_is_checked_again_and_runs_once_it_is_fixed(
        redis_url, tmp_path, monkeypatch) -> None:
    """ETCH01's E1 body was edited at the tool: verification finds no approved version and
    the state of record inhibits the tool until a report of E1 matches again. Only a start
    verified a body, and an inhibited tool gets no start: the tool was out of auto dispatch
    for good, even after the engineer restored the body. fabd now checks such a tool's
    bodies again every minute; the matching report lifts the inhibit and the lot runs."""
    import time
    from types import SimpleNamespace

    from daemon import core as core_mod

    clock = [time.monotonic()]
    monkeypatch.setattr(core_mod, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                          time=time.time))
    held = {"ETCH01": {"E1": b"edited at the tool\n"}}
    async with running_fab(redis_url, tmp_path, {"ETCH01": "ETCH"}, held,
                           route(("ETCH", "E1"))) as fab:
        fab.mes.create_lot("L1", "PO", "P", 25)
        fab.tick()
        refused = await eventually(lambda: fab.refusals("L1"), what="L1 refused")
        assert refused[0]["code"] == "tool_inhibited"
        assert "recipe:E1" in fab.mes.tools["ETCH01"].inhibits
        fab.sims["ETCH01"].handler.recipes["E1"] = body("E1")   # the engineer restores it
        clock[0] += 61.0

        def started() -> str:
            fab.tick()
            return fab.running_on("L1")

        assert await eventually(started, timeout_s=30.0, what="L1 started") == "ETCH01"
        assert not fab.mes.tools["ETCH01"].inhibits


async def test_no_lot_is_started_once_the_stop_has_begun(redis_url, tmp_path) -> None:
    """SIGTERM: the stop's first phase (intake) has run; the tick still runs until the
    sessions stop, but a lot started now would run on a tool fabd is about to leave. L1
    stays queued for the next run; before the stop it would have been started."""
    tools = {"ETCH01": "ETCH"}
    held = {"ETCH01": {"E1": body("E1")}}
    async with running_fab(redis_url, tmp_path, tools, held, route(("ETCH", "E1"))) as fab:
        fab.mes.create_lot("L1", "PO", "P", 25)
        await fab.core._stop_intake()
        for _ in range(10):
            fab.tick()
            await asyncio.sleep(0.1)
        assert fab.lot("L1").state == "queued"
        assert "lot_tracked_in" not in [e["type"] for e in await fab.lots_stream()]
