"""The per-tool OPC UA session: connect, subscribe, turn data changes into domain events.

`OpcUaSession.run()` supervises one tool forever: it connects (jittered
exponential backoff between attempts), subscribes every node of the profile,
translates each data change into domain events (`sink.submit`, in order, by a
delivery task) or SPC points (`sink.points`, batched per publish), and when the
connection goes away it says so once, reconnects and re-subscribes. The
session is also the tool's `ToolControl`: remote commands become method calls.

OPC UA keeps no spool, so an event the bounded queue cannot take is not dropped:
when the daemon core falls that far behind, the session drops the connection
(one ERROR), ignores data changes, and reconnects once the core has taken
everything queued. The reconnect resyncs the record: `ToolConnected` says what
the tool runs now and the subscription's first values give the E10 state, the
control state and the alarms. The session's own state (lot, E10 state, alarms)
only ever moves with an event queued, so it is what the record will hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from asyncua import ua

from daemon.cancel import raise_if_cancelled
from equipment import metrics
from equipment.events import (
    AlarmCleared,
    AlarmSet,
    CommandResult,
    ControlState,
    ControlStateChanged,
    DomainEvent,
    E10State,
    E10StateChanged,
    EventSink,
    ProcessCompleted,
    ProcessPoint,
    ProcessStarted,
    RemoteCommand,
    ToolConnected,
    ToolDisconnected,
)
from equipment.opcua.client import OpcUaClient, status_name
from equipment.opcua.config import OpcUaToolConfig
from equipment.opcua.errors import (
    OpcUaCommandError,
    OpcUaError,
    OpcUaNotConnectedError,
    OpcUaSecurityError,
)
from equipment.reconnect import Outages
from equipment.statewatch import StateWatch

log = logging.getLogger(__name__)

PROTOCOL = "opcua"
EVENT_QUEUE_SIZE = 10_000

# HCACK values (E30) the OPC UA answers map to.
HCACK_OK, HCACK_INVALID_COMMAND, HCACK_CANNOT_NOW, HCACK_PARAMETER = 0, 1, 2, 3
_PARAMETER_STATUS = frozenset({
    ua.StatusCodes.BadInvalidArgument, ua.StatusCodes.BadArgumentsMissing,
    ua.StatusCodes.BadTooManyArguments, ua.StatusCodes.BadTypeMismatch,
    ua.StatusCodes.BadOutOfRange, ua.StatusCodes.BadNotFound,
})
_COMMAND_STATUS = frozenset({
    ua.StatusCodes.BadMethodInvalid, ua.StatusCodes.BadNodeIdUnknown,
    ua.StatusCodes.BadNodeIdInvalid, ua.StatusCodes.BadNotExecutable,
    ua.StatusCodes.BadUserAccessDenied,
})


class OpcUaSessionState(enum.StrEnum):
    """Where the session is; tests and the daemon can wait on changes."""

    NOT_CONNECTED = "not_connected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class _Role(enum.IntEnum):
    PARAMETER = 0
    E10 = 1
    LOT = 2
    RECIPE = 3
    ALARM_BOOL = 4
    ALARM_CODE = 5
    STATUS = 6
    CONTROL = 7


class OpcUaSession(StateWatch[OpcUaSessionState]):
    """One OPC UA tool: domain events out, remote commands in (a ToolControl)."""

    def __init__(self, config: OpcUaToolConfig, sink: EventSink, *,
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        self.config = config
        self.tool_id = config.tool_id
        self.sink = sink
        self.status: dict[str, Any] = {}  # latest value of each status_nodes entry
        self.e10_state: E10State | None = None
        self.control_state: ControlState | None = None
        self.lot_id = ""
        self.recipe_id = ""
        self._lot_recipe_id = ""  # the recipe of lot_id when it started
        self._clock = clock
        self._rng = random.Random(seed)
        self._init_state(OpcUaSessionState.NOT_CONNECTED)
        self._client: OpcUaClient | None = None
        self._link: OpcUaClient | None = None  # the current attempt's client, up or not
        self._events: asyncio.Queue[DomainEvent] | None = None
        self._drained: asyncio.Event | None = None  # set: everything queued was submitted
        self._resyncing = False  # the queue overflowed: data changes ignored until reconnect
        self._points: list[ProcessPoint] = []
        self._flush_scheduled = False
        self._roles: dict[ua.NodeId, tuple[_Role, Any]] = {}
        self._alarm_on: dict[int, bool] = {}
        self._alarm_code: dict[str, int] = {}
        self._sums: dict[str, list[float]] = {}  # parameter -> [sum, count] for the running lot
        self._unknown_values: set[str] = set()
        # parameter node -> (source timestamp, value) of the last sample taken
        self._last_sample: dict[str, tuple[Any, float]] = {}
        self._labels = (self.tool_id, PROTOCOL)
        self._m_received = metrics.MESSAGES_RECEIVED.labels(*self._labels)
        self._skip_idle = bool(config.lot_id_node) and not config.idle_points
        self.connects = 0  # successful connects so far (1 + reconnects)
        self.failed_attempts = 0  # connect attempts that failed

    # -- supervisor -----------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise the tool forever: connect, subscribe, deliver, reconnect (until cancelled)."""
        self.config.validate()
        self._events = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._drained = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver_loop(), name=f"opcua-deliver[{self.tool_id}]")
            tg.create_task(self._connection_loop(), name=f"opcua-connect[{self.tool_id}]")

    async def _connection_loop(self) -> None:
        cfg = self.config
        outages = Outages(cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
        assert self._events is not None and self._drained is not None
        # ToolConnected, ToolDisconnected and the lot ended while away wait for room: the
        # record's connection state and lots must never miss them.
        queue = self._events
        try:
            while True:
                raise_if_cancelled()
                resynced = self._resyncing
                if resynced:
                    # Only once the core has taken everything queued: sooner, the resync's
                    # first values would find the queue full again.
                    await self._drained.wait()
                    self._resyncing = False
                self._set_state(OpcUaSessionState.CONNECTING)
                client = self._link = OpcUaClient(cfg)
                announced = False
                try:
                    await client.connect()
                    running = await self._read_running(client)
                    if running is not None and self.lot_id and running[0] != self.lot_id:
                        # the lot we saw start ended while we were away: its end first, so
                        # the record does not take it for lost at ToolConnected
                        for event in self._lot_change(""):
                            await queue.put(event)
                    # Before subscribing: the initial values must follow ToolConnected.
                    await queue.put(ToolConnected(
                        tool_id=self.tool_id, ts=self._clock(), protocol=PROTOCOL,
                        peer=cfg.endpoint_url, running_lot=None if running is None else running[0],
                        running_recipe="" if running is None else running[1]))
                    announced = True
                    await self._subscribe(client)
                    raise_if_cancelled()
                except (OpcUaError, OSError, TimeoutError, ua.UaError) as exc:
                    await client.close()
                    if announced:
                        await queue.put(ToolDisconnected(tool_id=self.tool_id, ts=self._clock(),
                                                         protocol=PROTOCOL,
                                                         reason=status_name(exc)))
                    self.failed_attempts += 1
                    self._set_state(OpcUaSessionState.NOT_CONNECTED)
                    refusal = isinstance(exc, OpcUaSecurityError)
                    say = outages.failed(refused=refusal)
                    if say and refusal:  # said even after the outage's WARNING
                        log.error("tool %s: OPC UA server %s refused us: %s; check the "
                                  "certificates and credentials", self.tool_id,
                                  cfg.endpoint_url, exc)
                    elif say:
                        log.warning("tool %s: OPC UA server %s unreachable (%s); retrying",
                                    self.tool_id, cfg.endpoint_url, exc)
                    await asyncio.sleep(outages.delay_s())
                    continue
                self._client = client
                if self.connects:
                    metrics.RECONNECTS.labels(*self._labels).inc()
                self.connects += 1
                metrics.CONNECTED.labels(*self._labels).set(1)
                if outages.up():
                    log.info("tool %s: back: OPC UA session up at %s after %d failed attempt(s)",
                             self.tool_id, cfg.endpoint_url, outages.failures)
                elif resynced:
                    log.info("tool %s: resynced: OPC UA session up again at %s after the "
                             "event queue overflow", self.tool_id, cfg.endpoint_url)
                elif self.connects == 1:
                    log.info("tool %s: OPC UA session up at %s", self.tool_id, cfg.endpoint_url)
                self._set_state(OpcUaSessionState.CONNECTED)
                reason = await client.wait_lost()
                self._client = None
                metrics.CONNECTED.labels(*self._labels).set(0)
                self._set_state(OpcUaSessionState.NOT_CONNECTED)
                overflow = self._resyncing  # we dropped it (said by _overflow), not the tool
                if not overflow and outages.lost():
                    log.warning("tool %s: OPC UA connection to %s lost (%s); reconnecting",
                                self.tool_id, cfg.endpoint_url, reason)
                await queue.put(ToolDisconnected(tool_id=self.tool_id, ts=self._clock(),
                                                 protocol=PROTOCOL, reason=reason))
                await client.close()
                if not overflow:
                    await asyncio.sleep(outages.delay_s())
        finally:
            client, self._client, self._link = self._client, None, None
            metrics.CONNECTED.labels(*self._labels).set(0)
            self._set_state(OpcUaSessionState.NOT_CONNECTED)
            if client is not None:
                await client.close()

    async def _read_running(self, client: OpcUaClient) -> tuple[str, str] | None:
        """The lot the tool runs now and its recipe, read at connect ("" for none), so that
        the record can be checked against it (ToolConnected.running_lot); None when the
        profile has no lot node or the tool would not say (a Bad value)."""
        cfg = self.config
        if not cfg.lot_id_node:
            return None
        try:
            lot = await client.read(cfg.lot_id_node)
            recipe = await client.read(cfg.recipe_node) if cfg.recipe_node else ""
        except ua.UaStatusCodeError as exc:
            log.info("tool %s: current lot not readable at connect (%s): the record cannot be "
                     "checked", self.tool_id, status_name(exc))
            return None
        lot = "" if lot is None else str(lot).strip()
        return lot, "" if recipe is None or not lot else str(recipe)

    async def _subscribe(self, client: OpcUaClient) -> None:
        cfg = self.config
        roles: dict[str, tuple[_Role, Any]] = {}
        # The server sends initial values in this order. Recipe before lot, so a
        # ProcessStarted seen at (re)connect carries the recipe; lot before parameters, so
        # the current values are charted for the lot running now, not for one that ended
        # while we were away.
        if cfg.recipe_node:
            roles[cfg.recipe_node] = (_Role.RECIPE, None)
        if cfg.lot_id_node:
            roles[cfg.lot_id_node] = (_Role.LOT, None)
        if cfg.e10_state_node:
            roles[cfg.e10_state_node] = (_Role.E10, None)
        if cfg.control_state_node:
            roles[cfg.control_state_node] = (_Role.CONTROL, None)
        for p in cfg.parameters:
            roles[p.node_id] = (_Role.PARAMETER, p)
        for a in cfg.alarms:
            roles[a.node_id] = (_Role.ALARM_BOOL if a.kind == "bool" else _Role.ALARM_CODE, a)
        for name, node in cfg.status_nodes.items():
            roles[node] = (_Role.STATUS, name)
        self._roles = {ua.NodeId.from_string(n): r for n, r in roles.items()}
        refused = await client.subscribe(list(roles), _Handler(self, client))
        for node in refused:
            log.error("tool %s: server refused to monitor %s (check the profile)",
                      self.tool_id, node)

    # -- data changes -> events and points ------------------------------------------------

    def _room(self, n: int) -> bool:
        """Tell whether n more events fit the queue; if not, start a resync.

        Asked before the session's state moves, so that state never runs ahead of what
        the record will hold: the resync then reports what changed in the meantime.
        """
        queue = self._events
        assert queue is not None
        if not self._resyncing and queue.maxsize - queue.qsize() >= n:
            return True
        self._overflow()
        return False

    def _overflow(self) -> None:
        if self._resyncing:
            return  # once per overflow, not once per data change
        self._resyncing = True
        metrics.EVENT_QUEUE_OVERFLOWS.labels(*self._labels).inc()
        assert self._events is not None
        log.error("tool %s: event queue full (%d events), the daemon core is behind (stuck?): "
                  "dropping the OPC UA session; fabd will resync the tool when the core "
                  "catches up", self.tool_id, self._events.maxsize)
        if self._link is not None:
            self._link.mark_lost("event queue full")

    def _emit(self, event: DomainEvent) -> None:
        # Room was checked (_room) before the state moved.
        assert self._events is not None
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self._overflow()

    async def _deliver_loop(self) -> None:
        assert self._events is not None and self._drained is not None
        queue, drained = self._events, self._drained
        while True:
            if queue.empty():
                drained.set()  # every event taken has been submitted: a resync may go on
            batch = [await queue.get()]
            drained.clear()
            while not queue.empty():
                batch.append(queue.get_nowait())
            await self.sink.submit(batch)

    def on_data_change(self, node_id: ua.NodeId, value: Any, source_ts: Any) -> None:
        """Translate one data change (called by the subscription handler)."""
        self._m_received.inc()
        role = self._roles.get(node_id)
        if role is None or self._resyncing:
            return  # resyncing: the reconnect's first values report where the tool is then
        kind, arg = role
        if kind is _Role.PARAMETER:
            self._on_parameter(arg, value, source_ts)
        elif kind is _Role.E10:
            self._on_e10(value)
        elif kind is _Role.CONTROL:
            self._on_control(value)
        elif kind is _Role.LOT:
            self._on_lot("" if value is None else str(value).strip())
        elif kind is _Role.RECIPE:
            self.recipe_id = "" if value is None else str(value)
        elif kind is _Role.ALARM_BOOL:
            self._on_alarm_bool(arg, bool(value))
        elif kind is _Role.ALARM_CODE:
            self._on_alarm_code(arg, value)
        else:
            self.status[arg] = value

    def on_bad_value(self, node_id: ua.NodeId, status: ua.StatusCode) -> None:
        """Report a data change with a Bad status; the last good value stands."""
        self._m_received.inc()
        if node_id in self._roles:
            self._malformed(f"{node_id.to_string()}: the server reports {status.name}",
                            hint="value ignored until it is good again")

    def _on_parameter(self, p: Any, value: Any, source_ts: Any) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self._malformed(f"{p.parameter}={value!r}")
            return
        if not math.isfinite(v):
            # NaN/inf is no measurement (a sensor out of range); one would poison the chart
            # and the lot's mean.
            self._malformed(f"{p.parameter}={value!r}", hint="value not charted")
            return
        if source_ts is not None:
            # A new subscription (after a link drop) sends the current value again: the
            # same sample, already charted, when its source timestamp has not moved.
            sample = (source_ts, v)
            if self._last_sample.get(p.node_id) == sample:
                return
            self._last_sample[p.node_id] = sample
        if not self.lot_id and self._skip_idle:
            return  # an idle tool's setpoints and zeros are not process data
        ts = source_ts.timestamp() if source_ts is not None else self._clock()
        self._points.append(ProcessPoint(self.tool_id, p.parameter, v, ts, self.lot_id,
                                         p.chamber))
        if self.lot_id:
            acc = self._sums.get(p.parameter)
            if acc is None:
                self._sums[p.parameter] = [v, 1.0]
            else:
                acc[0] += v
                acc[1] += 1.0
        if not self._flush_scheduled:
            # One sink.points() call per publish response, not per value.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_points)

    def _flush_points(self) -> None:
        self._flush_scheduled = False
        points, self._points = self._points, []
        if points:
            self.sink.points(points)

    def _on_control(self, value: Any) -> None:
        mapping = self.config.control_state_values
        key = str(value)
        try:
            state = mapping[key] if mapping else ControlState(key.lower())
        except (KeyError, ValueError):
            self._malformed(f"control state value {value!r}")
            return
        if state is not self.control_state and self._room(1):
            self.control_state = state
            self._emit(ControlStateChanged(tool_id=self.tool_id, ts=self._clock(), state=state))

    def _on_e10(self, value: Any) -> None:
        mapping = self.config.e10_state_values
        key = str(value)
        try:
            state = mapping[key] if mapping else E10State(key.lower())
        except (KeyError, ValueError):
            self._malformed(f"E10 state value {value!r}")
            return
        if state is not self.e10_state and self._room(1):
            self.e10_state = state
            self._emit(E10StateChanged(tool_id=self.tool_id, ts=self._clock(), state=state))

    def _on_lot(self, lot: str) -> None:
        if lot == self.lot_id or not self._room(bool(self.lot_id) + bool(lot)):
            return
        for event in self._lot_change(lot):
            self._emit(event)

    def _lot_change(self, lot: str) -> list[DomainEvent]:
        """Move to `lot` ("" for none); return the events saying so, the last lot's end first."""
        events: list[DomainEvent] = []
        now = self._clock()
        if self.lot_id:
            means = {k: s / n for k, (s, n) in self._sums.items() if n}
            # The recipe the lot ran with: the recipe variable may already name the next one.
            events.append(ProcessCompleted(tool_id=self.tool_id, ts=now, lot_id=self.lot_id,
                                           recipe_id=self._lot_recipe_id, parameters=means))
            log.debug("tool %s: lot %s completed", self.tool_id, self.lot_id)
        self._sums = {}
        self.lot_id = lot
        self._lot_recipe_id = self.recipe_id if lot else ""
        if lot:
            events.append(ProcessStarted(tool_id=self.tool_id, ts=now, lot_id=lot,
                                         recipe_id=self.recipe_id))
            log.debug("tool %s: lot %s started (recipe %s)", self.tool_id, lot, self.recipe_id)
        return events

    def _on_alarm_bool(self, a: Any, on: bool) -> None:
        if self._alarm_on.get(a.alid, False) == on or not self._room(1):
            return
        self._alarm_on[a.alid] = on
        cls = AlarmSet if on else AlarmCleared
        self._emit(cls(tool_id=self.tool_id, ts=self._clock(), alid=a.alid, text=a.text))

    def _on_alarm_code(self, a: Any, value: Any) -> None:
        try:
            code = int(value or 0)
        except (TypeError, ValueError):
            self._malformed(f"alarm code {value!r}")
            return
        prev = self._alarm_code.get(a.node_id, 0)
        if code == prev or not self._room(bool(prev) + bool(code)):
            return
        self._alarm_code[a.node_id] = code
        now = self._clock()
        if prev:
            self._emit(AlarmCleared(tool_id=self.tool_id, ts=now, alid=prev, text=a.text))
        if code:
            self._emit(AlarmSet(tool_id=self.tool_id, ts=now, alid=code, text=a.text))

    def _malformed(self, what: str, hint: str = "check the profile") -> None:
        metrics.MALFORMED.labels(*self._labels).inc()
        if what not in self._unknown_values and len(self._unknown_values) < 1000:
            self._unknown_values.add(what)
            log.warning("tool %s: cannot interpret %s (%s)", self.tool_id, what, hint)

    # -- ToolControl ----------------------------------------------------------------------

    async def command(self, rcmd: RemoteCommand, params: dict[str, str]) -> CommandResult:
        """Call the method configured for a remote command; map the answer to HCACK."""
        method = self.config.commands.get(str(rcmd))
        if method is None:
            return CommandResult(accepted=False, code=HCACK_INVALID_COMMAND,
                                 reason=f"{rcmd} not configured for this tool")
        missing = [a for a in method.args if a not in params]
        if missing:
            return CommandResult(accepted=False, code=HCACK_PARAMETER,
                                 reason=f"missing parameter(s) {', '.join(missing)}")
        client = self._client
        if client is None:
            return CommandResult(accepted=False, code=HCACK_CANNOT_NOW, reason="not connected")
        args = [params[a] for a in method.args]
        metrics.MESSAGES_SENT.labels(*self._labels).inc()
        try:
            await client.call(method.object_node, method.method_node, args, method.timeout_s)
        except ua.UaStatusCodeError as exc:
            name = status_name(exc)
            code = (HCACK_PARAMETER if exc.code in _PARAMETER_STATUS else
                    HCACK_INVALID_COMMAND if exc.code in _COMMAND_STATUS else HCACK_CANNOT_NOW)
            log.info("tool %s: %s refused: %s", self.tool_id, rcmd, name)
            return CommandResult(accepted=False, code=code, reason=name)
        except TimeoutError:
            metrics.REPLY_TIMEOUTS.labels(*self._labels).inc()
            log.warning("tool %s: %s not answered within %.1f s", self.tool_id, rcmd,
                        method.timeout_s)
            return CommandResult(accepted=False, code=HCACK_CANNOT_NOW, reason="timeout")
        except (OpcUaError, OSError, ua.UaError) as exc:
            return CommandResult(accepted=False, code=HCACK_CANNOT_NOW, reason=status_name(exc))
        log.debug("tool %s: %s accepted", self.tool_id, rcmd)
        return CommandResult(accepted=True, code=HCACK_OK)

    def _recipe_client(self, what: str) -> tuple[OpcUaClient, Any]:
        recipes = self.config.recipes
        if recipes is None or not getattr(recipes, what):
            raise OpcUaCommandError(f"tool {self.tool_id}: recipes.{what} not configured")
        if self._client is None:
            raise OpcUaNotConnectedError(f"tool {self.tool_id}: not connected")
        return self._client, recipes

    @contextlib.asynccontextmanager
    async def _typed_errors(self, what: str) -> Any:
        # Raw asyncua errors do not leave the adapter: refused -> give up, link -> retry.
        try:
            yield
        except ua.UaStatusCodeError as exc:
            raise OpcUaCommandError(f"tool {self.tool_id}: {what} refused: "
                                    f"{status_name(exc)}") from exc
        except (TimeoutError, OSError, ua.UaError) as exc:
            raise OpcUaNotConnectedError(f"tool {self.tool_id}: {what} failed: "
                                         f"{status_name(exc)}") from exc

    async def recipe_list(self) -> list[str]:
        """Read the tool's recipe list variable."""
        client, recipes = self._recipe_client("list_node")
        async with self._typed_errors("recipe list"):
            value = await client.read(recipes.list_node)
        return [str(v) for v in (value or [])]

    async def recipe_upload(self, ppid: str) -> bytes:
        """Fetch a recipe body through the upload method."""
        client, recipes = self._recipe_client("upload_method")
        async with self._typed_errors(f"upload of {ppid}"):
            out = await client.call(recipes.object_node, recipes.upload_method, [ppid],
                                    self.config.request_timeout_s)
        return bytes(out[0]) if out and out[0] is not None else b""

    async def recipe_download(self, ppid: str, body: bytes) -> bool:
        """Send a recipe body through the download method; True when the tool accepts it."""
        client, recipes = self._recipe_client("download_method")
        try:
            async with self._typed_errors(f"download of {ppid}"):
                out = await client.call(recipes.object_node, recipes.download_method,
                                        [ppid, bytes(body)], self.config.request_timeout_s)
        except OpcUaNotConnectedError:
            raise
        except OpcUaCommandError as exc:
            log.info("tool %s: recipe %s refused: %s", self.tool_id, ppid, exc.__cause__)
            return False
        return bool(out[0]) if out else True


class _Handler:
    """asyncua subscription handler: forwards to the session, flags a dead subscription."""

    def __init__(self, session: OpcUaSession, client: OpcUaClient) -> None:
        self._session = session
        self._client = client

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        source_ts = status = None
        with contextlib.suppress(AttributeError):
            source_ts = data.monitored_item.Value.SourceTimestamp
            status = data.monitored_item.Value.StatusCode
        if status is not None and status.is_bad():
            # Part 4, 7.7.1: a Bad value is not the variable's value (a gateway lost the PLC,
            # BadWaitingForInitialData): an empty lot id would end the lot, False clear an alarm.
            self._session.on_bad_value(node.nodeid, status)
            return
        self._session.on_data_change(node.nodeid, val, source_ts)

    def status_change_notification(self, status: Any) -> None:
        code = getattr(getattr(status, "Status", None), "value", None)
        if code is not None and ua.StatusCode(code).is_bad():
            self._client.mark_lost(ua.StatusCode(code).name)
