"""The integration bus facade the daemon plugs in: store, MES state, writer, relay, ERP intake, snapshots.

    bus = Bus(redis=cfg.redis, store=cfg.store, bus=cfg.bus, state_dir=cfg.service.state_directory)
    await bus.start()                       # open the store, rebuild the state
    async with asyncio.TaskGroup() as tg:
        bus.create_tasks(tg)                # writer, relay, erp intake, wip snapshots
        ...                                 # adapters get `bus.sink`; the tick reads `bus.mes`
    # on stop: await bus.drain(budget_s) before cancelling the tasks, then await bus.close()

Equipment adapters deliver domain events to `bus.sink` (an `EventSink`):
`submit()` applies them to the state of record and returns once they are
committed, so the adapter acknowledges its tool (S6F12) after the await.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from daemon.busconfig import BusConfig, RedisConfig, StoreConfig
from daemon.erp import ErpIntake
from daemon.mes import HELD, PROCESSING, QUEUED, MesState, RunningStats
from daemon.relay import Relay
from daemon.snapshot import WipSnapshots
from daemon.store import Store
from daemon.writer import Writer
from equipment import events as dom

log = logging.getLogger(__name__)

POINTS_DROPPED = Counter("fabd_process_points_dropped_total",
                         "Process-data points not summarised (too many open lot summaries)")
VALUES_NOT_FINITE = Counter("fabd_process_values_not_finite_total",
                            "Process values a tool reported as NaN or infinite, left out of the "
                            "lot's summary")


class MesEventSink:
    """An EventSink that applies equipment domain events through the MES state, durably."""

    def __init__(self, mes: MesState, writer: Writer, max_open_summaries: int = 100_000) -> None:
        self.mes = mes
        self.writer = writer
        self.max_open_summaries = max_open_summaries
        self.forward: Callable[[list[dom.ProcessPoint]], None] | None = None  # e.g. the SPC engine
        self._stats: dict[tuple[str, str], dict[str, RunningStats]] = {}  # (tool, lot) -> params

    async def submit(self, events: list[dom.DomainEvent]) -> None:
        """Apply events to the state of record; return once they are durable."""
        for event in events:
            self.apply(event)
        await self.writer.durable()

    def points(self, points: list[dom.ProcessPoint]) -> None:
        """Summarise process points per lot (for track-out) and pass them on to SPC."""
        stats = self._stats
        for p in points:
            if not p.lot_id:
                continue
            if not math.isfinite(p.value):   # one NaN would make the lot's mean NaN (JSON null)
                VALUES_NOT_FINITE.inc()
                continue
            key = (p.tool_id, p.lot_id)
            params = stats.get(key)
            if params is None:
                if len(stats) >= self.max_open_summaries:
                    POINTS_DROPPED.inc()
                    continue
                params = stats[key] = {}
            rs = params.get(p.parameter)
            if rs is None:
                rs = params[p.parameter] = RunningStats()
            rs.add(p.value)
        if self.forward is not None:
            self.forward(points)

    def apply(self, e: dom.DomainEvent) -> None:
        """Apply one domain event (not yet durable)."""
        mes = self.mes
        match e:
            case dom.ToolConnected():
                mes.tool_connected(e.tool_id, e.protocol, e.peer, e.ts)
            case dom.ToolDisconnected():
                mes.tool_disconnected(e.tool_id, e.protocol, e.reason, e.ts)
            case dom.E10StateChanged():
                mes.set_tool_state(e.tool_id, e.state.value, e.reason, e.ts)
            case dom.ControlStateChanged():
                mes.set_control_state(e.tool_id, e.state.value, e.ts)
            case dom.AlarmSet():
                mes.alarm(e.tool_id, e.alid, True, e.text, e.ts)
            case dom.AlarmCleared():
                mes.alarm(e.tool_id, e.alid, False, e.text, e.ts)
            case dom.RecipeReport():
                mes.recipe_report(e.tool_id, e.ppid, e.checksum, e.ts)
            case dom.ProcessStarted():
                self._started(e)
            case dom.ProcessCompleted():
                self._completed(e)
            case dom.TerminalMessage():
                log.info("tool %s terminal message: %s", e.tool_id, e.text)

    def _started(self, e: dom.ProcessStarted) -> None:
        lot = self.mes.lots.get(e.lot_id)
        if lot is not None and lot.state == PROCESSING and lot.tool_id == e.tool_id:
            return  # reported again (reconnect, spool replay): already recorded
        if lot is not None and lot.state == HELD:
            # The tool runs it all the same: say so, and record where the lot really is (else
            # its completion is dropped too and, once released, it would run the step again).
            holds = ", ".join(h.reason for h in lot.holds)
            self.mes.process_unexpected(e.tool_id, e.lot_id, "started", f"lot is held ({holds})",
                                        e.ts)
            self.mes.track_in(e.lot_id, e.tool_id, e.recipe_id, e.ts, held_ok=True)
            return
        if lot is None or lot.state != QUEUED:
            why = "unknown lot" if lot is None else f"lot is {lot.state}"
            self.mes.process_unexpected(e.tool_id, e.lot_id, "started", why, e.ts)
            return
        self.mes.track_in(e.lot_id, e.tool_id, e.recipe_id, e.ts)

    def _completed(self, e: dom.ProcessCompleted) -> None:
        lot = self.mes.lots.get(e.lot_id)
        params = self._stats.pop((e.tool_id, e.lot_id), {})
        if lot is None or not self.mes.completes(e.lot_id, e.tool_id):
            why = "unknown lot" if lot is None else f"lot is {lot.state} on {lot.tool_id or '-'}"
            self.mes.process_unexpected(e.tool_id, e.lot_id, "completed", why, e.ts)
            return
        for name, value in e.parameters.items():
            if name not in params:
                if not math.isfinite(float(value)):
                    VALUES_NOT_FINITE.inc()
                    continue
                params[name] = RunningStats()
                params[name].add(float(value))
        if params:
            summaries = [rs.summary(name) for name, rs in sorted(params.items())]
            self.mes.process_summary(e.lot_id, e.tool_id, e.recipe_id, summaries, ts=e.ts)
        self.mes.track_out(e.lot_id, e.tool_id, e.ok, e.ts)


class Bus:
    """Owns the store, the MES state and the loops that move events in and out of Redis."""

    def __init__(self, *, redis: RedisConfig, store: StoreConfig, bus: BusConfig,
                 state_dir: str | Path) -> None:
        self.redis_config = redis
        self.store_config = store
        self.bus_config = bus
        self.path = Path(state_dir) / store.filename
        self.store: Store | None = None
        self.mes: MesState = MesState()
        self.writer: Writer | None = None
        self.relay: Relay | None = None
        self.erp: ErpIntake | None = None
        self.snapshots: WipSnapshots | None = None
        self.sink: MesEventSink | None = None

    async def start(self) -> None:
        """Open the store and rebuild the state of record from it."""
        self.store = Store(self.path, self.store_config.synchronous)
        loaded = await self.store.call(self.store.open)
        self.mes = MesState(instance_id=loaded.instance_id)
        self.mes.load(loaded.entities, loaded.seqs, loaded.jseq, loaded.applied)
        self.writer = Writer(self.mes, self.store, self.store_config,
                             committed_jseq=loaded.jseq, sent_jseq=loaded.sent_jseq)
        self.relay = Relay(self.bus_config, self.redis_config, self.store_config, self.store,
                           self.writer)
        self.erp = ErpIntake(self.bus_config, self.redis_config, self.mes, self.writer,
                             self.relay, rejected=loaded.rejected)
        self.snapshots = WipSnapshots(self.bus_config, self.mes)
        self.sink = MesEventSink(self.mes, self.writer)
        log.info("bus ready: %d lots, %d tools, %d unpublished events", len(self.mes.lots),
                 len(self.mes.tools), self.relay.depth)

    def create_tasks(self, tg: asyncio.TaskGroup) -> list[asyncio.Task]:
        """Start the bus loops as named tasks in the daemon's TaskGroup."""
        return [tg.create_task(self.writer_loop(), name="bus.writer"),
                tg.create_task(self.relay_loop(), name="bus.relay"),
                tg.create_task(self.erp_loop(), name="bus.erp"),
                tg.create_task(self.snapshot_loop(), name="bus.snapshot")]

    async def writer_loop(self) -> None:
        """Group-commit pending changes until cancelled."""
        await self.writer.run()

    async def relay_loop(self) -> None:
        """Publish the outbox to Redis until cancelled."""
        await self.relay.run()

    async def erp_loop(self) -> None:
        """Apply ERP commands until cancelled."""
        await self.erp.run()

    async def snapshot_loop(self) -> None:
        """Emit WIP snapshots until cancelled."""
        await self.snapshots.run()

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every change made so far is committed."""
        return self.writer.durable()

    async def drain(self, timeout_s: float) -> bool:
        """Commit what is pending and wait until the relay published it (before cancelling)."""
        await self.writer.flush()  # works whether or not the writer loop still runs
        ok = await self.relay.drain(timeout_s)
        if not ok:
            log.warning("stop: %d events still unpublished; they stay in the outbox for the "
                        "next start", self.relay.depth)
        return ok

    async def close(self) -> None:
        """Commit anything pending (and the relay cursor) and close the store."""
        if self.store is None:
            return
        try:
            await self.writer.flush()
        finally:
            await self.store.call(self.store.close)
            self.store.shutdown()
            self.store = None
