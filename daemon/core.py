"""The running fab: equipment, state of record, SPC, dispatch and the bus wired into one daemon.

`FabCore.install(app)` adds everything to the App:

- components: the bus loops (writer, relay, ERP intake, WIP snapshots), one
  session per tool (`hsms[<tool>]`, `opcua[<tool>]`), one per MQTT broker, and
  the dispatch action workers;
- warm-ups before READY: open the store and rebuild the state, compile the
  SPC and dispatch kernels, build the dispatch model;
- tick steps, in the order ARCHITECTURE.md fixes: `spc` (tests on the points
  that came in, then holds and inhibits), `sync` (dispatch model ← state of
  record), `dispatch` (score idle tools; auto groups get their lot started,
  advisory groups get their list published), `gauges` (metrics);
- stop hooks: stop ERP intake, commit and drain the outbox, separate sessions.

Every state change goes through `MesState` (the one writer); equipment events
come in through `CoreSink`, which the adapters await before they acknowledge
their tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from daemon import metrics
from daemon.app import App
from daemon.bus import Bus
from daemon.config import FabdConfig
from daemon.events import SpcPoint
from daemon.fabsync import FabSync
from daemon.mes import COMPLETED, HELD, PROCESSING, QUEUED, MesError
from dispatch import enforce
from dispatch.scorer import Dispatcher
from equipment import events as dom
from equipment.events import RemoteCommand
from spc.errors import UnknownChartError

log = logging.getLogger("fabd.core")

_E10_STATES = [s.value for s in dom.E10State]
_REFUSAL_BACKOFF_S = 10.0
# A tool inhibited for a recipe body that matched no approved version is checked again this
# often (the fix is made at the tool; a matching report lifts the inhibit).
_RECHECK_INHIBITED_S = 60.0
# Refusals about this tool and this recipe (not the lot): the recipe stays off the tool for a
# while, and the tool gets its other lots.
_RECIPE_REFUSALS = frozenset((
    enforce.Refusal.UNKNOWN_RECIPE, enforce.Refusal.WRONG_TOOL_GROUP,
    enforce.Refusal.NOT_QUALIFIED, enforce.Refusal.RECIPE_VERSION_MISMATCH,
    enforce.Refusal.RECIPE_NOT_VERIFIED, enforce.Refusal.RECIPE_CHECKSUM_MISMATCH))
STORE_STALL_S = 30.0  # a store commit running this long is a stuck disk: /healthz fails
_SPC_SAVE_EVERY_TICKS = 60  # SPC chart state is saved about once a minute (and at stop)
_SPC_LOG_LINES = 20  # above this many violations in a tick, notify-only ones are summarised


class CoreSink:
    """The EventSink the adapters get: state of record first, then the fab metrics."""

    def __init__(self, core: FabCore) -> None:
        self.core = core

    async def submit(self, events: list[dom.DomainEvent]) -> None:
        core = self.core
        mes = core.bus.mes
        core.spc_from_completions(events)       # before the expansion: a batch is one run
        events = expand_batches(events)
        core.judge_starts(events)
        freed = [e.tool_id for e in events if isinstance(e, dom.ProcessCompleted)
                 and mes.completes(e.lot_id, e.tool_id)]
        await core.bus.sink.submit(events)
        for tool_id in freed:
            core.tool_freed(tool_id)
        for e in events:
            if isinstance(e, dom.ToolConnected):
                starts = core.reconcile_connected(e)
                if starts:
                    await self.submit(starts)
                await core.bus.durable()

    def points(self, points: list[dom.ProcessPoint]) -> None:
        sink = self.core.bus.sink
        if not any("," in p.lot_id for p in points):
            sink.points(points)
            return
        # A batch tool traces the batch under its lot ids comma-separated: every lot of it
        # gets the values in its process summary; the charts get each value once (one run).
        forward, sink.forward = sink.forward, None
        try:
            sink.points([msgspec.structs.replace(p, lot_id=lot_id) if "," in p.lot_id else p
                         for p in points for lot_id in (batch_lot_ids(p.lot_id) or [""])])
        finally:
            sink.forward = forward
        if forward is not None:
            forward(points)


def batch_lot_ids(lot_id: str) -> list[str]:
    """The lot ids in a tool's lot id value: a batch tool sends them comma-separated."""
    return [x.strip() for x in lot_id.split(",") if x.strip()]


def expand_batches(events: list[dom.DomainEvent]) -> list[dom.DomainEvent]:
    """A batch tool reports one process start/end for the batch, its lot ids comma-separated."""
    if not any(isinstance(e, dom.ProcessStarted | dom.ProcessCompleted) and "," in e.lot_id
               for e in events):
        return events
    out: list[dom.DomainEvent] = []
    for e in events:
        if isinstance(e, dom.ProcessStarted | dom.ProcessCompleted) and "," in e.lot_id:
            out.extend(msgspec.structs.replace(e, lot_id=lot_id)
                       for lot_id in batch_lot_ids(e.lot_id))
        else:
            out.append(e)
    return out


class FabCore:
    """Owns the bus, the SPC engine, the dispatcher and the equipment sessions."""

    def __init__(self, config: FabdConfig, *, recipes: dict[str, bytes] | None = None) -> None:
        self.config = config
        self.bus = Bus(redis=config.redis, store=config.store, bus=config.bus,
                       state_dir=config.service.state_directory)
        self.sink = CoreSink(self)
        self.sessions: dict[str, Any] = {}  # tool id -> ToolControl session
        self.mqtt: list[Any] = []
        self.spc = None
        self._spc_inhibits: set[tuple[str, str]] = set()  # (tool, "spc:..." inhibit) last tick
        self._ping_client: Any = None  # redis client of the readiness check, made on first use
        self.fabsync: FabSync | None = None
        self.dispatcher: Dispatcher | None = None
        self._dispatch_generation = -1
        # Approved recipe bodies for S7F3 download: by recipe id (the demo's, one version) and
        # by (recipe id, version) from [dispatch] recipe_directory.
        self._recipe_bodies: dict[str, bytes] = dict(recipes or {})
        self._versioned_bodies: dict[tuple[str, int], bytes] = {}
        self._versioned_ids: set[str] = set()  # recipe ids with bodies in _versioned_bodies
        self._actions: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue(maxsize=10_000)
        self._reserved_tools: dict[str, float] = {}  # tool -> monotonic end of its backoff
        self._starting: set[str] = set()  # tools with a start queued or under way
        self._blocked: dict[tuple[str, str], float] = {}  # (tool, recipe) -> monotonic end
        self._checked_at: dict[str, float] = {}  # tool -> monotonic time of its last S7 upload
        self._reserved_lots: set[str] = set()
        self._stopping = False  # the stop began: no new lot is started on a tool
        self._last_lists: dict[str, tuple[str, ...]] = {}
        self._state_since: dict[str, tuple[str, float]] = {}  # tool -> (E10 state, since)
        self._unchecked: set[str] = set()  # tools logged as not saying what they run
        self.counters: dict[str, int] = defaultdict(int)
        self._spc_ticks = 0

    # -- assembly -------------------------------------------------------------------------
    def install(self, app: App) -> None:
        """Register warm-ups, components, tick steps and stop hooks with the App."""
        app.add_warmup("store", self.start)
        app.add_warmup("spc-kernels", self._warm_spc)
        app.add_warmup("dispatch-kernels", self._warm_dispatch)
        bus = self.bus
        app.add_component("bus.writer", bus.writer_loop, critical=True)
        app.add_component("bus.relay", bus.relay_loop)
        app.add_component("bus.erp", bus.erp_loop)
        app.add_component("bus.snapshot", bus.snapshot_loop)
        for tool in self.config.equipment.hsms:
            from equipment.gem.session import GemHostSession

            s = GemHostSession(tool, self.sink)
            self.sessions[tool.tool_id] = s
            app.add_component(f"hsms[{tool.tool_id}]", s.run)
        for tool in self.config.equipment.opcua:
            from equipment.opcua.session import OpcUaSession

            s = OpcUaSession(tool, self.sink)
            self.sessions[tool.tool_id] = s
            app.add_component(f"opcua[{tool.tool_id}]", s.run)
        for broker in self.config.equipment.mqtt:
            from equipment.mqtt.session import MqttSession

            s = MqttSession(broker, self.sink, current_lot=self.current_lot,
                            lot_at=self.lot_at)
            self.mqtt.append(s)
            app.add_component(f"mqtt[{broker.broker_id}]", s.run)
        for i in range(4):
            app.add_component(f"dispatch.actions[{i}]", self._actions_loop)
        app.tick.add_step("spc", self.step_spc)
        app.tick.add_step("sync", self.step_sync)
        app.tick.add_step("dispatch", self.step_dispatch)
        app.tick.add_step("gauges", self.step_gauges)
        app.add_readiness_check("store", lambda: self.bus.store is not None)
        app.add_readiness_check("redis", self._redis_reachable)
        app.add_liveness_check("store", self._store_alive)
        app.add_stop_hook("intake", "erp", self._stop_intake)
        app.add_stop_hook("flush", "outbox", self._flush)
        app.add_stop_hook("sessions", "equipment", self._stop_sessions)
        app.add_closer("spc", self.save_spc)
        app.add_closer("readiness", self._close_ping_client)
        app.add_closer("store", self.bus.close)

    def _store_alive(self) -> str:
        """A commit that does not come back (a disk that stopped answering) stops every
        acknowledgement to the tools: say so ("" while commits come back)."""
        stalled = self.bus.writer.commit_stalled_s()
        if stalled < STORE_STALL_S:
            return ""
        return (f"a store commit has been running for {stalled:.0f} s (the disk under "
                f"{self.config.service.state_directory} is not answering?); no event is "
                "acknowledged to the tools meanwhile")

    async def start(self) -> None:
        """Open the store, rebuild the state of record and the dispatch model."""
        await self.bus.start()
        self.bus.sink.forward = self._on_points
        mes = self.bus.mes
        mes.on_step_end = self._step_ended
        mes.on_lot_completed = self._lot_completed
        mes.on_wafers_scrapped = self._wafers_scrapped
        for tool in list(mes.tools.values()):
            if tool.connected:
                # The store says "connected", but that connection ended with the previous
                # run (a stop or crash records no disconnect): the tool is back when its
                # session says so; until then nothing is dispatched to it.
                mes.tool_disconnected(tool.tool_id, _protocol(self.sessions.get(tool.tool_id)),
                                      "fabd restarted")
        self.fabsync = FabSync(mes)
        self.fabsync.sync()
        self._load_recipe_bodies()

    def _step_ended(self, lot: Any, tool_id: str, step_id: str, arrived: float,
                    ts: float) -> None:
        """The fab metrics of a step's end, whichever way it ended (the tool's completion, a
        late one, an engineer's complete_step)."""
        metrics.CYCLE_TIME_STEP.labels(step_id).observe(max(0.0, ts - arrived))
        tool = self.bus.mes.tools.get(tool_id)
        metrics.MOVES.labels(tool.tool_group if tool else "").inc()

    def _lot_completed(self, lot: Any, ts: float) -> None:
        """The fab metrics of a lot's completion (at its last step's end, or at the release of
        a hold placed while it ran that step)."""
        metrics.COMPLETIONS.labels(lot.product_id).inc()
        metrics.CYCLE_TIME_LOT.labels(lot.product_id).observe(max(0.0, ts - lot.created_ts))

    def _wafers_scrapped(self, lot: Any, wafers: int) -> None:
        metrics.WAFERS_SCRAPPED.labels(lot.product_id).inc(wafers)

    def _load_recipe_bodies(self) -> None:
        """Approved bodies from [dispatch] recipe_directory, named <recipe_id>.v<version>."""
        directory = self.config.dispatch.recipe_directory
        if directory:
            for path in sorted(Path(directory).glob("*.v*")):
                recipe_id, _, version = path.name.rpartition(".v")
                if version.isdigit():
                    self._versioned_bodies[(recipe_id, int(version))] = path.read_bytes()
                    self._versioned_ids.add(recipe_id)

    def _body_to_send(self, ppid: str, version: int) -> bytes | None:
        """The approved body of the version a step names (never another version's)."""
        if ppid in self._versioned_ids:
            return self._versioned_bodies.get((ppid, version))
        return self._recipe_bodies.get(ppid)

    def _warm_spc(self) -> None:
        from spc import kernel
        from spc.engine import SpcEngine

        kernel.warm()
        self.spc = SpcEngine(self.config.spc)
        path = self._spc_snapshot_path()
        if path.exists():
            try:
                self.spc.restore(path.read_bytes())
                log.info("SPC charts restored from %s", path)
            except Exception as exc:  # a stale or foreign snapshot: charts start in phase I
                log.warning("SPC snapshot %s not restored (%s); charts re-estimate limits",
                            path, exc)
            # the snapshot holds each chart's spec: a config edited while fabd was stopped
            # (new limits: a new phase) applies now; the changes go out with the first tick
            changed = self.spc.apply_config()
            if changed:
                log.info("SPC: %d charts take the config changed since the snapshot (e.g. %s)",
                         len(changed), changed[0])
        # the inhibits the store brought back: one an ERP release lifts before the first
        # tick is a release too (its chart's runs restart)
        self._spc_inhibits = self._spc_inhibit_keys()

    def _spc_snapshot_path(self) -> Path:
        return Path(self.config.service.state_directory) / "spc.snapshot"

    def save_spc(self) -> None:
        """Write the SPC charts (limits, run windows, history) so a restart keeps them."""
        if self.spc is None:
            return
        path = self._spc_snapshot_path()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self.spc.snapshot())
            f.flush()
            os.fsync(f.fileno())   # on disk before it replaces the last good snapshot
        tmp.replace(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)   # and the rename with it
        finally:
            os.close(dir_fd)

    def _warm_dispatch(self) -> None:
        from dispatch import scorer

        scorer.warm()
        self._dispatcher()

    def _dispatcher(self) -> Dispatcher:
        assert self.fabsync is not None
        if self.dispatcher is None or self._dispatch_generation != self.fabsync.generation:
            policy = self.dispatcher.policy if self.dispatcher else self.config.dispatch.policy
            self.dispatcher = Dispatcher(self.fabsync.model, policy)
            self._dispatch_generation = self.fabsync.generation
        return self.dispatcher

    def reload_policy(self, policy: Any) -> list[tuple[str, str]]:
        """Swap the dispatch policy (SIGHUP); keep the old one when the new one is invalid."""
        return self._dispatcher().reload(policy)

    # -- reads for adapters and status --------------------------------------------------------
    def current_lot(self, tool_id: str) -> str:
        """The lots processing on the tool ("L1,L2" for a batch: an SPC hold holds each)."""
        return self.bus.mes.running_lots(tool_id)

    def lot_at(self, tool_id: str, ts: float) -> str:
        return self.bus.mes.lot_at(tool_id, ts)

    def judge_starts(self, events: list[dom.DomainEvent]) -> None:
        """Report a start fabd did not make that the track-in checks would have refused.

        In advisory mode (or at the tool, by hand) a lot starts without fabd's checks; the
        record follows the tool all the same, but an engineer must see a lot run on a tool
        outside the step's group, not qualified for its recipe, inhibited, or with another
        step's recipe: a `process_unexpected` event with the reasons. The recipe body is not
        judged: fabd verifies bodies only for the starts it makes.
        """
        mes = self.bus.mes
        seen: set[str] = set()
        for e in events:
            if not isinstance(e, dom.ProcessStarted | dom.ProcessCompleted):
                continue
            lot = mes.lots.get(e.lot_id)
            # a queued lot is what the state of record is about to track in (held, running,
            # unknown ones are reported by the state of record itself); a lot an earlier
            # event of this batch moves is judged by the state it will be in, not this one
            if (isinstance(e, dom.ProcessStarted) and e.lot_id not in seen
                    and lot is not None and lot.state == QUEUED):
                problems = self._start_problems(lot, e)
                if problems:
                    mes.process_unexpected(e.tool_id, e.lot_id, "started", "; ".join(problems),
                                           e.ts)
            seen.add(e.lot_id)

    def _start_problems(self, lot: Any, e: dom.ProcessStarted) -> list[str]:
        mes = self.bus.mes
        step = mes.step_of(lot)
        tool = mes.tools.get(e.tool_id)
        group = tool.tool_group if tool is not None else ""
        problems = []
        if e.recipe_id and e.recipe_id != step.recipe_id:
            problems.append(f"out_of_sequence: lot {e.lot_id} is at step {step.step_id}, "
                            f"which runs {step.recipe_id}, not {e.recipe_id}")
        if group != step.tool_group:
            problems.append(f"wrong_tool_group: step {step.step_id} runs on {step.tool_group}, "
                            f"tool {e.tool_id} is in {group or 'no group'}")
        if tool is None or step.recipe_id not in tool.qualified:
            problems.append(f"not_qualified: tool {e.tool_id} is not qualified for "
                            f"{step.recipe_id}")
        if tool is not None and tool.inhibits:
            problems.append("tool_inhibited: " + ", ".join(
                f"{key} ({why})" if why else key for key, why in tool.inhibits.items()))
        return problems

    def tool_freed(self, tool_id: str) -> None:
        self._reserved_tools.pop(tool_id, None)

    def reconcile_connected(self, e: dom.ToolConnected) -> list[dom.DomainEvent]:
        """Compare what a (re)connected tool runs with the record; return the starts it found.

        The session reports it after the spool replay, so a completion the tool kept has been
        applied by now. A lot the record has on the tool that the tool no longer runs ended
        unreported (lost while the link was down: the tool's spool off, overflowed or purged):
        the tool is freed and the lot held at its step. A lot the tool runs that the record
        does not have there is a start fabd did not see, returned to be applied and judged
        like any other. A tool that does not say what it runs is left alone.
        """
        mes = self.bus.mes
        tool = mes.tools.get(e.tool_id)
        if tool is None:
            return []
        if e.running_lot is None:
            if tool.lot_id and e.tool_id not in self._unchecked:
                self._unchecked.add(e.tool_id)
                log.info("tool %s does not say what it runs at connect: the record (lot %s "
                         "there) cannot be checked", e.tool_id, tool.lot_id)
            return []
        running = list(dict.fromkeys(batch_lot_ids(e.running_lot)))
        if tool.lot_id and tool.lot_id not in running:
            reason = (f"completion not reported by {e.tool_id} (link lost while processing); "
                      "verify the step, then complete_step (it ran) or release (run it again)")
            for lot in mes.active_lots():
                if (lot.state == PROCESSING and lot.tool_id == e.tool_id
                        and lot.lot_id not in running):
                    log.warning("tool %s no longer runs lot %s and never reported its end: "
                                "tool freed, lot held", e.tool_id, lot.lot_id)
                    mes.completion_lost(lot.lot_id, e.tool_id, reason)
            self.tool_freed(e.tool_id)
        return [dom.ProcessStarted(tool_id=e.tool_id, ts=e.ts, lot_id=lot_id,
                                   recipe_id=e.running_recipe)
                for lot_id in running if (lot := mes.lots.get(lot_id)) is None
                or lot.state != PROCESSING or lot.tool_id != e.tool_id]

    async def _redis_reachable(self) -> bool:
        """PING Redis: the relay only talks to Redis when it has events to send, so its last
        result can be minutes old (and a Redis that went away while fabd was idle unseen)."""
        try:
            if self._ping_client is None:
                from daemon.redis_conn import make_client

                self._ping_client = make_client(self.config.redis, socket_timeout=2.0,
                                                socket_connect_timeout=2.0)
            async with asyncio.timeout(2.5):
                return bool(await self._ping_client.ping())
        except Exception:  # down, refusing, unauthenticated: not ready, whatever the reason
            return False

    async def _close_ping_client(self) -> None:
        if self._ping_client is not None:
            await self._ping_client.aclose()

    # -- tick steps ---------------------------------------------------------------------------
    def _on_points(self, points: list[dom.ProcessPoint]) -> None:
        if self.spc is None:
            return
        mes = self.bus.mes

        def step_of(p: dom.ProcessPoint) -> str:
            lot_id = p.lot_id
            if "," in lot_id:   # a batch: its lots run the same step
                lot_id = next(iter(batch_lot_ids(lot_id)), "")
            # a late sample (an MQTT backlog) of a lot that has moved on: its step then
            return mes.step_at(p.tool_id, lot_id, p.ts) if lot_id else ""

        accepted = self.spc.add_points(points, step_of=step_of)
        metrics.SPC_POINTS.inc(accepted)
        if accepted < len(points):
            metrics.SPC_POINTS_DROPPED.inc(len(points) - accepted)

    def spc_from_completions(self, events: list[dom.DomainEvent]) -> None:
        """Each lot's measured parameters (ProcessCompleted) are one point on its step's chart.

        Only a completion that ends the lot's step is charted, as only it makes the lot's
        process summary: data of a lot the MES does not know, or a completion the tool sends
        again once the lot has moved on (reported as process_unexpected), belongs to no step
        of the lot, and a chart must not mix it into a step's history (nor count it twice).
        The events are not applied yet: a start earlier in them counts. A batch's completion
        ("B1,B2", not expanded yet) is one run: one point, under the lots it completes.
        """
        mes = self.bus.mes
        running: dict[tuple[str, str], bool] = {}   # (lot, tool): processing there by now
        points = []
        for e in events:
            if isinstance(e, dom.ProcessStarted):   # what the record will make of it
                for lot in batch_lot_ids(e.lot_id):
                    rec = mes.lots.get(lot)
                    running[lot, e.tool_id] = rec is not None and (
                        rec.state in (QUEUED, HELD) or mes.completes(lot, e.tool_id))
            if not isinstance(e, dom.ProcessCompleted):
                continue
            done = []
            for lot in batch_lot_ids(e.lot_id):
                if (lot, e.tool_id) not in running:
                    running[lot, e.tool_id] = mes.completes(lot, e.tool_id)
                if running[lot, e.tool_id]:
                    done.append(lot)
                    running[lot, e.tool_id] = False
            if done and e.parameters:
                points.extend(dom.ProcessPoint(e.tool_id, name, float(value), e.ts,
                                               ",".join(done), e.chamber)
                              for name, value in e.parameters.items())
        if points:
            self._on_points(points)

    def step_spc(self) -> None:
        """Run the SPC tests on the new points; hold lots and inhibit tools as the charts say."""
        if self.spc is None:
            return
        mes = self.bus.mes
        self._restart_released_charts()
        result = self.spc.evaluate()
        self._spc_ticks += 1
        if self._spc_ticks % _SPC_SAVE_EVERY_TICKS == 0:
            self.save_spc()
        for ch in result.limit_changes:
            lim = ch.limits
            if lim is not None:
                mes.spc_limits_changed(ch.chart_key, lim.center, lim.lcl, lim.ucl, ch.reason)
        for v in result.violations:
            rule = f"{v.rule_set}{v.test}" + (f"_{v.series}" if v.series in ("mr", "r", "s")
                                              else "")
            metrics.SPC_VIOLATIONS.labels(rule).inc()
            parameter = v.chart_key.rsplit("/", 1)[-1]
            action = str(v.action)
            mes.spc_violation(
                v.chart_key, v.tool_id, parameter, rule, v.statistic, v.lot_id, action,
                chamber=v.chamber, test=v.test, description=v.description,
                limits_version=v.limits_version,
                points=[SpcPoint(value=x, ts=t, lot_id=lot)
                        for x, t, lot in zip(v.values, v.ts, v.lot_ids, strict=False)])
            # a batch's point holds every lot of it; a refused hold does not stop the others
            for lot_id in batch_lot_ids(v.lot_id) if action == "hold_lot" else [""]:
                try:
                    self._spc_react(v, action, lot_id)
                except MesError as exc:
                    log.warning("SPC reaction on %s not applied: %s", v.chart_key, exc)
            if action != "notify" or len(result.violations) <= _SPC_LOG_LINES:
                log.warning("SPC %s on %s (tool %s, lot %s): %s -> %s", rule, v.chart_key,
                            v.tool_id, v.lot_id or "-", v.description, action)
        if len(result.violations) > _SPC_LOG_LINES:
            log.warning("SPC: %d violations this tick (notify-only ones not logged one by one)",
                        len(result.violations))

    def _spc_react(self, v: Any, action: str, lot_id: str) -> None:
        """Apply a violation's reaction plan: hold the lot, or inhibit the chamber or tool."""
        mes = self.bus.mes
        reason = f"spc:{v.chart_key}"
        if action == "hold_lot":
            # The wafers the data is about, wherever they are now: merged into another lot,
            # or split off since the run the data came from (a split waits for the run's end)
            times = [float(t) for t in v.ts]
            flagged = times[-1] if times else mes.clock()
            since = mes.run_start(v.tool_id, lot_id, flagged)
            for lot in mes.wafers_of(lot_id, min(times, default=flagged) if since is None
                                     else since):
                if any(h.reason == reason for h in lot.holds):
                    continue
                try:
                    mes.hold(lot.lot_id, reason, "spc")
                    self.counters["spc_holds"] += 1
                except MesError as exc:   # finished since: the others are still held
                    log.warning("SPC reaction on %s not applied to lot %s: %s", v.chart_key,
                                lot.lot_id, exc)
        elif action == "inhibit_chamber" and v.chamber:
            mes.inhibit(v.tool_id, f"{reason}@{v.chamber}", True, v.description)
        elif action in ("inhibit_tool", "inhibit_chamber"):
            mes.inhibit(v.tool_id, reason, True, v.description)

    def _restart_released_charts(self) -> None:
        """A chart whose inhibit an engineer released (ERP release_tool) starts its run rules
        afresh: the points from before the corrective action must not trip the tool again."""
        assert self.spc is not None
        now = self._spc_inhibit_keys()
        for _tool, key in self._spc_inhibits - now:
            chart = key.removeprefix("spc:")
            for candidate in (chart, chart.rsplit("@", 1)[0]):   # "spc:<chart>@<chamber>"
                with contextlib.suppress(UnknownChartError):
                    self.spc.reset(candidate)
                    break
        self._spc_inhibits = now

    def _spc_inhibit_keys(self) -> set[tuple[str, str]]:
        return {(t.tool_id, k) for t in self.bus.mes.tools.values() if t.inhibits
                for k in t.inhibits if k.startswith("spc:")}

    def step_sync(self) -> None:
        """Bring the dispatch model up to date with the state of record."""
        assert self.fabsync is not None
        self.fabsync.sync()

    def step_dispatch(self) -> None:
        """Score the idle tools; start lots on auto groups, publish lists for advisory ones."""
        assert self.fabsync is not None
        dispatcher = self._dispatcher()
        model = self.fabsync.model
        if model.n_tools == 0:
            return
        mes = self.bus.mes
        now_min = model.minutes(mes.clock())
        lists = dispatcher.score(now_min)
        cfg = self.config.dispatch
        auto_groups = {g for g in model.group_ids if cfg.group_modes.get(g, cfg.mode) == "auto"}
        if cfg.publish_lists:
            for tool_id in model.tool_ids:
                tool = mes.tools.get(tool_id)
                if tool is None or tool.tool_group in auto_groups or tool.lot_id:
                    continue
                t = model.tool(tool_id)
                lots = tuple(model.lot_ids[int(lists.lot[t, k])] for k in range(int(lists.n[t])))
                # an emptied list (its lots held or gone, the tool down) is published once too:
                # the latest list is what operators work from
                if lots != self._last_lists.get(tool_id, ()):
                    self._last_lists[tool_id] = lots
                    mes.dispatch_list(tool_id, list(lots),
                                      [float(lists.key[t, k, 0]) for k in range(len(lots))])
                    if lots:
                        metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "advised").inc()
        if not auto_groups or self._stopping:
            return
        # Auto groups: the scorer's assignment (a batch on batch tools, no lot on two tools),
        # among the tools a lot can be started on now and the lots not already on their way.
        mono = time.monotonic()
        unavailable = [tool_id for tool_id in model.tool_ids
                       if (tool := mes.tools.get(tool_id)) is not None
                       and tool.tool_group in auto_groups and not self._startable(tool, mono)]
        for pair in [p for p, until in self._blocked.items() if until <= mono]:
            del self._blocked[pair]
        assignment = dispatcher.assign(now_min, unavailable=unavailable,
                                       taken=self._reserved_lots, blocked=self._blocked)
        for tool_id, lots in assignment.items():
            tool = mes.tools.get(tool_id)
            if tool is None or tool.tool_group not in auto_groups or not self._startable(tool, mono):
                continue
            chosen = [x for x in lots if x not in self._reserved_lots
                      and (lot := mes.lots.get(x)) is not None and lot.state == QUEUED]
            if not chosen:
                continue
            # the tool and its lots stay out of dispatch until this start is done, however
            # long the tool takes (verification alone may take 3 x command_timeout_s)
            self._starting.add(tool_id)
            self._reserved_lots.update(chosen)
            try:
                self._actions.put_nowait((tool_id, chosen))
            except asyncio.QueueFull:
                self._starting.discard(tool_id)
                self._reserved_lots.difference_update(chosen)
                metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "queue_full").inc()
        # A body that matched no approved version inhibits the tool until a report of that
        # recipe matches again; only a start uploaded bodies, and an inhibited tool gets no
        # start: check its bodies again now and then (an empty action), or it never returns.
        for tool_id in model.tool_ids:
            tool = mes.tools.get(tool_id)
            if (tool is not None and tool.tool_group in auto_groups and tool.inhibits
                    and all(key.startswith("recipe:") for key in tool.inhibits)
                    and self._startable(tool, mono, backoff=False)
                    and mono - self._checked_at.get(tool_id, -math.inf) >= _RECHECK_INHIBITED_S):
                self._checked_at[tool_id] = mono
                self._starting.add(tool_id)
                try:
                    self._actions.put_nowait((tool_id, []))
                except asyncio.QueueFull:
                    self._starting.discard(tool_id)

    def _startable(self, tool: Any, now_mono: float, *, backoff: bool = True) -> bool:
        """Whether fabd could send this tool a start now: idle, connected with a session, no
        start of ours in flight (and, with backoff, not backing off after a refusal)."""
        return (not tool.lot_id and tool.connected and tool.tool_id in self.sessions
                and tool.tool_id not in self._starting
                and not (backoff and self._reserved_tools.get(tool.tool_id, 0.0) > now_mono))

    def step_gauges(self) -> None:
        """Refresh the gauges a shift lead watches (tools by state, WIP, holds, utilisation)."""
        mes = self.bus.mes
        now = time.time()
        by_state = dict.fromkeys(_E10_STATES, 0)
        for tool in mes.tools.values():
            state = tool.e10_state if tool.connected else "unscheduled_down"
            by_state[state] = by_state.get(state, 0) + 1
            prev = self._state_since.get(tool.tool_id)
            if prev is not None:
                metrics.TOOL_E10_SECONDS.labels(tool.tool_group, prev[0]).inc(
                    max(0.0, now - prev[1]))
            self._state_since[tool.tool_id] = (state, now)
        for state, n in by_state.items():
            metrics.TOOLS_BY_E10.labels(state).set(n)
        wip: dict[tuple[str, str], int] = defaultdict(int)
        wafers: dict[str, int] = defaultdict(int)
        holds: dict[str, int] = defaultdict(int)
        for lot in mes.active_lots():
            try:
                group = mes.step_of(lot).tool_group
            except (KeyError, IndexError):
                group = ""
            wip[(group, lot.step_id)] += 1
            wafers[lot.product_id] += lot.wafers
            for h in lot.holds:
                holds[_hold_class(h)] += 1
        metrics.WIP_LOTS.clear()
        for (group, step), n in wip.items():
            metrics.WIP_LOTS.labels(group, step).set(n)
        metrics.WIP_WAFERS.clear()
        for product, n in wafers.items():
            metrics.WIP_WAFERS.labels(product).set(n)
        metrics.HOLDS.clear()
        for reason, n in holds.items():
            metrics.HOLDS.labels(reason).set(n)

    # -- acting on tools ----------------------------------------------------------------------
    async def _actions_loop(self) -> None:
        """Carry out dispatch decisions: verify the recipe, enforce, PP-SELECT + START."""
        while True:
            tool_id, lots = await self._actions.get()
            try:
                if self._stopping:
                    # a lot started now would run on a tool whose session ends in a moment:
                    # it stays queued for the next run (a start under way goes on)
                    continue
                if lots:
                    await self._start_lots(tool_id, lots)
                else:
                    await self._recheck_inhibiting_recipes(tool_id)
            except Exception:
                log.exception("tool %s: starting %s failed", tool_id,
                              ",".join(lots) or "nothing (checking inhibiting recipes)")
                self._backoff(tool_id)   # e.g. no reply to PP-SELECT / START: not again at once
            finally:
                self._reserved_lots.difference_update(lots)
                self._starting.discard(tool_id)

    async def _start_lots(self, tool_id: str, lots: list[str]) -> None:
        mes = self.bus.mes
        session = self.sessions[tool_id]
        tool = mes.tools[tool_id]
        head = mes.lots[lots[0]]
        step = mes.step_of(head)
        ppid = step.recipe_id
        timeout_s = self.config.dispatch.command_timeout_s
        # 1. The recipe on the tool must be the approved body (S7F19 / S7F5, S7F3 if missing).
        try:
            async with asyncio.timeout(timeout_s * 3):
                verified = await self._verify_recipe(session, tool_id, ppid,
                                                     step.recipe_version)
        except Exception as exc:
            log.warning("tool %s: cannot verify recipe %s: %r", tool_id, ppid, exc)
            self._backoff(tool_id)
            metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "recipe_unverified").inc()
            return
        if not verified:   # the tool lacks it and fabd cannot send it: its other lots may run
            self._block(tool_id, ppid)
            return
        # 2. Track-in enforcement on the model (qualification, version, checksum, step, holds,
        #    queue time, inhibits), brought up to date first.
        assert self.fabsync is not None
        self.fabsync.sync()
        model = self.fabsync.model
        now_min = model.minutes(mes.clock())
        started: list[str] = []
        for lot_id in lots:
            res = enforce.check_track_in(model, lot_id, tool_id, ppid, now_min,
                                         recipe_version=step.recipe_version)
            if res.ok:
                started.append(lot_id)
                continue
            code = str(res.reason)
            if res.reason in _RECIPE_REFUSALS:
                self._block(tool_id, ppid)
            metrics.TRACK_IN_REFUSED.labels(code).inc()
            mes.refuse_track_in(lot_id, tool_id, code, res.detail)
            if res.action == "hold":
                with contextlib.suppress(MesError):
                    kind = "queue_time" if res.reason == enforce.Refusal.QUEUE_TIME_EXCEEDED else ""
                    mes.hold(lot_id, res.hold_reason or code, "enforcement", kind)
        if not started:
            await self.bus.durable()
            return
        # 3. PP-SELECT + START.
        async with asyncio.timeout(timeout_s):
            sel = await session.command(RemoteCommand.PP_SELECT, {"PPID": ppid})
            if not sel.accepted:
                log.warning("tool %s refused PP-SELECT %s: HCACK %d %s", tool_id, ppid, sel.code,
                            sel.reason)
                self._backoff(tool_id)
                metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "select_refused").inc()
                return
            # a hold (or scrap) may have come in while we waited for the tool: start only the
            # lots that are still free to go
            started = [x for x in started if (lot := mes.lots.get(x)) is not None
                       and lot.state == QUEUED]
            if not started:
                await self.bus.durable()
                return
            res = await session.command(RemoteCommand.START, _start_params(session, ppid,
                                                                          started))
        if not res.accepted:
            log.warning("tool %s refused START of %s: HCACK %d %s", tool_id, ",".join(started),
                        res.code, res.reason)
            self._backoff(tool_id)
            metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "start_refused").inc()
            return
        for lot_id in started:
            lot = mes.lots.get(lot_id)
            if lot is not None and lot.state in (QUEUED, HELD):
                # held while START was on its way: the tool runs it, the hold applies after
                mes.track_in(lot_id, tool_id, ppid, held_ok=True)
        await self.bus.durable()
        self.counters["starts"] += 1
        metrics.DISPATCH_DECISIONS.labels(tool.tool_group, "started").inc()
        log.info("tool %s started %s with %s", tool_id, ",".join(started), ppid)

    def _backoff(self, tool_id: str) -> None:
        """A tool that refused us is left alone for a while (no retry storm, no log flood)."""
        self._reserved_tools[tool_id] = time.monotonic() + _REFUSAL_BACKOFF_S

    def _block(self, tool_id: str, ppid: str) -> None:
        """A tool that cannot run this recipe now is not offered it for a while (no refusal
        every tick, no lot starved behind it); its other recipes and other tools go on."""
        self._blocked[(tool_id, ppid)] = time.monotonic() + _REFUSAL_BACKOFF_S

    async def _verify_recipe(self, session: Any, tool_id: str, ppid: str, version: int) -> bool:
        """Make sure the tool holds the approved body of ppid; record the report durably."""
        held = await session.recipe_list()
        if ppid not in held:
            body = self._body_to_send(ppid, version)
            if body is None or not self.config.dispatch.download_missing_recipes:
                log.warning("tool %s does not hold recipe %s and fabd has no v%d body to send",
                            tool_id, ppid, version)
                return False
            if not await session.recipe_download(ppid, body):
                log.warning("tool %s refused the download of recipe %s", tool_id, ppid)
                return False
            log.info("tool %s: downloaded recipe %s (%d bytes)", tool_id, ppid, len(body))
        await self._upload_and_report(session, tool_id, ppid)
        return True

    async def _upload_and_report(self, session: Any, tool_id: str, ppid: str) -> None:
        """Upload a recipe body (S7F5) and record its checksum durably (a RecipeReport)."""
        self._checked_at[tool_id] = time.monotonic()
        body = await session.recipe_upload(ppid)
        report = dom.RecipeReport(tool_id=tool_id, ts=time.time(), ppid=ppid,
                                  checksum=hashlib.sha256(body).hexdigest(),
                                  size_bytes=len(body))
        await self.sink.submit([report])

    async def _recheck_inhibiting_recipes(self, tool_id: str) -> None:
        """Upload the recipes a tool is inhibited for; a body that matches lifts the inhibit."""
        mes = self.bus.mes
        session = self.sessions[tool_id]
        async with asyncio.timeout(self.config.dispatch.command_timeout_s * 3):
            held = await session.recipe_list()
            for key in [k for k in mes.tools[tool_id].inhibits if k.startswith("recipe:")]:
                ppid = key.removeprefix("recipe:")
                if ppid in held:
                    await self._upload_and_report(session, tool_id, ppid)
                else:   # the body that matched nothing is gone; a start sends the approved one
                    mes.inhibit(tool_id, key, False, "recipe no longer on the tool")
        await self.bus.durable()

    # -- stopping -----------------------------------------------------------------------------
    async def _stop_intake(self) -> None:
        self._stopping = True
        erp = self.bus.erp
        if erp is not None and hasattr(erp, "stop"):
            await _maybe(erp.stop())

    async def _flush(self) -> None:
        await self.bus.drain(self.config.service.stop_flush_budget_s * 0.9)

    async def _stop_sessions(self) -> None:
        for s in [*self.sessions.values(), *self.mqtt]:
            stop = getattr(s, "stop", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    await _maybe(stop())

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """What `fabd status` shows: tools, WIP by step, counters."""
        mes = self.bus.mes
        tools = [{"tool": t.tool_id, "group": t.tool_group,
                  "protocol": _protocol(self.sessions.get(t.tool_id)),
                  "connected": t.connected, "e10": t.e10_state, "lot": t.lot_id,
                  "inhibited": ",".join(t.inhibits)} for t in sorted(mes.tools.values(),
                                                                    key=lambda t: t.tool_id)]
        wip: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for lot in mes.active_lots():
            w = wip[(lot.product_id, lot.step_id)]
            w[0] += 1
            w[1] += lot.wafers
            w[2] += bool(lot.holds)
        completed = sum(1 for lot in mes.lots.values() if lot.state == COMPLETED)
        relay = self.bus.relay
        return {
            "tools": tools,
            "wip": [{"product": p, "step": s, "lots": n, "wafers": w, "held": h}
                    for (p, s), (n, w, h) in sorted(wip.items())],
            "counters": {"lots": len(mes.lots), "completed": completed,
                         "held": sum(1 for lot in mes.active_lots() if lot.holds),
                         "starts": self.counters["starts"],
                         "spc_holds": self.counters["spc_holds"],
                         "outbox": relay.depth if relay is not None else 0},
        }


def _hold_class(hold: Any) -> str:
    """The metric label of a hold: a bounded class, never the free text of its reason (queue-time
    reasons name steps and minutes, ERP reasons are whatever the ERP sends)."""
    if hold.kind:
        return hold.kind                       # queue_time
    if hold.by in ("spc", "enforcement"):
        return hold.by
    if hold.by == "mes":
        return hold.reason                     # nonconforming
    return "erp"


def _start_params(session: Any, ppid: str, lots: list[str]) -> dict[str, str]:
    """START carries the lot ids; adapters whose START also names the recipe get PPID too."""
    params = {"LOTID": ",".join(lots)}
    commands = getattr(getattr(session, "config", None), "commands", None) or {}
    start = commands.get("START") if isinstance(commands, dict) else None
    if start is not None and "PPID" in getattr(start, "args", ()):
        params["PPID"] = ppid
    return params


def _protocol(session: Any) -> str:
    if session is None:
        return ""
    name = type(session).__name__.lower()
    return "hsms" if "gem" in name else "opcua" if "opcua" in name else name


async def _maybe(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value
