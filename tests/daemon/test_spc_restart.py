"""SPC across a daemon restart: the chart state comes back from the snapshot, but a config
edited while fabd was stopped (the engineer's new centre and σ: a new phase of the chart)
must apply, and a tool release applied before the first tick must restart the chart's runs.

Before, the snapshot's spec and limits won over the config for every chart seen before
(lots were held against the old centre), and a release taken in right after the start was
not seen as one (the old run inhibited the tool again at the next point)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from daemon.config import FabdConfig, ServiceConfig
from daemon.core import FabCore
from equipment import events as dom
from spc.config import ChartSpec, Reaction, SpcConfig
from tests.daemon.bus_support import configs, define_master_data, read_stream, stop_tasks

CHART = "LITHO01/-/S0/CD"


@contextlib.asynccontextmanager
async def core_with(redis_url: str, state_dir, spec: ChartSpec) -> AsyncIterator[FabCore]:
    """The daemon core with an SPC config, warmed as before READY; stopped as at shutdown."""
    bus = configs(redis_url)
    core = FabCore(FabdConfig(service=ServiceConfig(state_directory=str(state_dir)),
                              redis=bus["redis"], store=bus["store"], bus=bus["bus"],
                              spc=SpcConfig(default=spec)))
    await core.start()
    core._warm_spc()
    tasks = [asyncio.create_task(core.bus.writer_loop()),
             asyncio.create_task(core.bus.relay_loop())]
    try:
        yield core
        core.save_spc()                          # what the daemon does at stop
        assert await core.bus.drain(5)
    finally:
        await stop_tasks(tasks)
        await core.bus.close()


def points(lot: str, n: int, value: float) -> list[dom.ProcessPoint]:
    now = time.time()
    return [dom.ProcessPoint("LITHO01", "CD", value, now + i, lot) for i in range(n)]


async def test_new_limits_in_the_config_apply_after_a_restart(redis_url, tmp_path) -> None:
    old = ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT)
    async with core_with(redis_url, tmp_path, old) as core:
        define_master_data(core.bus)
        for lot in ("L1", "L2"):
            core.bus.mes.create_lot(lot, "PO", "P-A", 25)
        core.sink.points(points("L1", 5, 0.5))   # above the old centre, nothing yet
        core.step_spc()
    # the process moved on purpose: the engineer re-centres the chart at 0.5
    new = ChartSpec(center=0.5, sigma=1.0, reaction=Reaction.HOLD_LOT)
    async with core_with(redis_url, tmp_path, new) as core:
        assert core.spc.limits(CHART).center == 0.5
        core.sink.points(points("L2", 4, 0.5))   # on the new centre: in control
        core.step_spc()
        assert [h.reason for h in core.bus.mes.lots["L2"].holds] == []
    quality = read_stream(redis_url, "fab:quality")
    assert [e["data"]["lot_id"] for e in quality if e["type"] == "spc_violation"] == []
    assert [(e["data"]["center"], e["data"]["reason"]) for e in quality
            if e["type"] == "spc_limits_changed"] == [(0.0, "config"), (0.5, "config")]


async def test_a_changed_reaction_plan_keeps_the_run_and_applies(redis_url, tmp_path) -> None:
    async with core_with(redis_url, tmp_path, ChartSpec(center=0.0, sigma=1.0)) as core:
        define_master_data(core.bus)
        core.bus.mes.create_lot("L1", "PO", "P-A", 25)
        core.sink.points(points("L1", 5, 0.5))
        core.step_spc()
    hold = ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.HOLD_LOT)
    async with core_with(redis_url, tmp_path, hold) as core:
        core.sink.points(points("L1", 4, 0.5))   # the ninth point in a row above the centre
        core.step_spc()
        assert [h.reason for h in core.bus.mes.lots["L1"].holds] == [f"spc:{CHART}"]


async def test_a_release_taken_in_before_the_first_tick_restarts_the_runs(redis_url,
                                                                          tmp_path) -> None:
    spec = ChartSpec(center=0.0, sigma=1.0, reaction=Reaction.INHIBIT_TOOL)
    async with core_with(redis_url, tmp_path, spec) as core:
        define_master_data(core.bus)
        core.sink.points(points("", 9, 0.5))     # nine in a row (no lot, no step): inhibit
        core.step_spc()
        assert list(core.bus.mes.tools["LITHO01"].inhibits) == ["spc:LITHO01/-/-/CD"]
    async with core_with(redis_url, tmp_path, spec) as core:
        core.bus.mes.release_tool("LITHO01", "recalibrated", "eng-kim")  # before any tick
        core.sink.points(points("", 1, 0.5))     # the tenth, of the old run
        core.step_spc()
        assert list(core.bus.mes.tools["LITHO01"].inhibits) == []
