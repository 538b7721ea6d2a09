"""A GEM process tool simulator built on secsgem's GemEquipmentHandler (passive HSMS).

It speaks the shared "fabd-sim" numbering (see `FabdSim` below and
equipment/gem/profile.py `FABD_SIM`): status variables, data values, collection
events with host-defined reports, E10 state changes, alarms, remote commands
(PP-SELECT, START, STOP, PAUSE, RESUME, ABORT) that run a lot through a recipe
for its process time, process programs held in memory (S7F3/F5/F17/F19), trace
data (S2F23 → S6F1), terminal messages (S10F3 in, S10F1 out), the clock
(S2F31), and E30 spooling of events and alarms produced while no host is
connected (S6F23 transmit or purge). When the host leaves one of its primaries
unanswered past T3, it sends S9F9 with that primary's header (E5).

Where secsgem 0.3 falls short the handler fills in: S2F31/32 are defined here,
the listening port stays bound across reconnects (port 0 works), a connection's
dispatcher thread is stopped with it, `on_connection_closed` is actually wired,
S6F11/S5F1 go out with the W-bit and are sent in order by one sender thread.

secsgem is thread-per-connection: every knob that sends something to the host is
an `async` method that runs the blocking secsgem call in a worker thread, so a
host running on the same event loop can still answer.

Test knobs: `shift()` / `drift()` a process parameter, `raise_alarm()` /
`clear_alarm()`, `set_e10()`, `set_control()`, `process_time_s`,
`hold_process()` / `release_process()` (lots end only when the test says),
`drop_connection()` now or `drop_on(stream, function)` when the next such message
arrives, `reply_delay_s` (provoke a host T3), `unsupported` (answer S9F5),
`unanswered` (answer nothing, as secsgem 0.3 does with an S2F31 it cannot decode),
`refuse_communication(n)` (COMMACK 1), `spool_busy(n)` (RSDA 1), `send_raw()` /
`hsms_frame()` (malformed frames, wrong session id, unknown system bytes),
`power_cycle()` (new handler, same port, every host definition forgotten),
`reset_knobs()`.
Command line: `python -m equipment.sim.gem_tool --port 5000`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import secsgem.common
import secsgem.gem
import secsgem.hsms
import secsgem.secs
from secsgem.common.tcp_connection import TcpConnection
from secsgem.gem.communication_state_machine import CommunicationState
from secsgem.gem.control_state_machine import ControlState
from secsgem.hsms.connection_state_machine import ConnectionState
from secsgem.hsms.message import HsmsMessage
from secsgem.hsms.stream_function_header import HsmsStreamFunctionHeader
from secsgem.secs import variables as sv
from secsgem.secs.functions.base import SecsStreamFunction

log = logging.getLogger("fabd.sim.gem_tool")


class FabdSim:
    """The "fabd-sim" GEM numbering shared by both simulators and the default driver profile."""

    SV_CONTROL_STATE = 1001
    SV_PROCESS_STATE = 1002
    SV_E10_STATE = 1003
    SV_PP_EXEC_NAME = 1004
    SV_CLOCK = 1005
    SV_CURRENT_LOT = 1006

    DV_LOT_ID = 2001
    DV_RECIPE_ID = 2002
    DV_E10_REASON = 2003
    DV_LOT_RESULT = 2004
    DV_TEMPERATURE = 2010
    DV_PRESSURE = 2011
    DV_RF_POWER = 2012
    DV_THICKNESS = 2013

    CE_PROCESS_STARTED = 3001
    CE_PROCESS_COMPLETED = 3002
    CE_E10_CHANGED = 3003
    CE_CONTROL_CHANGED = 3004
    CE_RECIPE_CHANGED = 3005

    AL_PRESSURE_HIGH = 5001
    AL_RF_REFLECTED = 5002
    AL_DOOR_INTERLOCK = 5003

    PARAMETERS = {
        DV_TEMPERATURE: "Temperature_C",
        DV_PRESSURE: "Pressure_Pa",
        DV_RF_POWER: "RFPower_W",
        DV_THICKNESS: "Thickness_nm",
    }
    ALARMS = {
        AL_PRESSURE_HIGH: "chamber pressure high",
        AL_RF_REFLECTED: "RF reflected power high",
        AL_DOOR_INTERLOCK: "door interlock",
    }
    E10_STATES = ("productive", "standby", "engineering", "scheduled_down",
                  "unscheduled_down", "non_scheduled")


class ProcessState:
    IDLE = 0
    SETUP = 1
    EXECUTING = 2
    PAUSED = 3


class GemToolSimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one simulated GEM tool behaves."""

    tool_id: str = "SIM01"
    bind_host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port; read it back from `GemToolSim.port`
    device_id: int = 0  # HSMS session id of the data messages
    process_time_s: float = 2.0  # how long a START runs before ProcessCompleted
    t3_reply_timeout_s: float = 10.0  # how long the tool waits for S6F12 / S5F2
    establish_comm_delay_s: int = 1  # E30 CommDelay between S1F13 attempts
    initial_e10_state: str = "standby"
    recipes: dict[str, bytes] = msgspec.field(default_factory=lambda: {
        "ETCH-A": b"step1 rf=300W t=60s\n", "DEP-B": b"step1 t=90s\n"})
    set_points: dict[str, float] = msgspec.field(default_factory=lambda: {
        "Temperature_C": 65.0, "Pressure_Pa": 13.3, "RFPower_W": 300.0, "Thickness_nm": 120.0})
    noise_sigma: dict[str, float] = msgspec.field(default_factory=lambda: {
        "Temperature_C": 0.3, "Pressure_Pa": 0.05, "RFPower_W": 1.0, "Thickness_nm": 0.5})
    spool_max_messages: int = 10_000  # 0: no spooling, events while disconnected are lost
    current_lot_kept: bool = False  # CurrentLotID keeps the last lot while idle (many tools do)
    seed: int = 1


def _dsper_to_s(dsper: str) -> float:
    """Turn an E5 DSPER (hhmmss or hhmmsscc) into seconds."""
    if len(dsper) not in (6, 8) or not dsper.isdigit():
        raise ValueError(f"bad DSPER {dsper!r}")
    seconds = int(dsper[0:2]) * 3600 + int(dsper[2:4]) * 60 + int(dsper[4:6])
    if len(dsper) == 8:
        seconds += int(dsper[6:8]) / 100
    return float(seconds)


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return bytes([value])
    return bytes(value)


class _S2F31(SecsStreamFunction):
    """Date and time set request (missing in secsgem 0.3)."""

    _stream = 2
    _function = 31
    _data_format = secsgem.secs.data_items.TIME
    _to_host = False
    _to_equipment = True
    _has_reply = True
    _is_reply_required = True
    _is_multi_block = False


class _S2F32(SecsStreamFunction):
    """Date and time set acknowledge: TIACK (missing in secsgem 0.3)."""

    _stream = 2
    _function = 32
    _data_format = secsgem.secs.data_items.TIAACK  # same shape as TIACK: B[1]
    _to_host = True
    _to_equipment = False
    _has_reply = False
    _is_reply_required = False
    _is_multi_block = False


def _streams_functions() -> secsgem.secs.functions.StreamsFunctions:
    functions = secsgem.secs.functions.StreamsFunctions()
    functions.update(_S2F31)
    functions.update(_S2F32)
    return functions


class _ListenerSettings(secsgem.hsms.HsmsSettings):
    """Passive HSMS settings whose connections accept on one long-lived listening socket."""

    def __init__(self, **kwargs: Any) -> None:
        self.listener: socket.socket = kwargs.pop("listener")
        super().__init__(**kwargs)

    def create_connection(self) -> secsgem.common.Connection:
        return _ListenerConnection(self)

    def create_protocol(self) -> secsgem.common.Protocol:
        return _Protocol(self)


class _Protocol(secsgem.hsms.HsmsProtocol):
    """secsgem's HSMS protocol, minus a leak: it never stops a connection's dispatcher thread.

    Every reconnect would add one more thread dispatching the same queue, so two
    messages of one connection could be handled at once and out of order.
    """

    def _on_disconnected(self, data: dict[str, Any]) -> None:
        super()._on_disconnected(data)
        dispatcher = self._thread
        thread = dispatcher._dispatcher_thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            dispatcher._stop_dispatcher_thread = True
            dispatcher._dispatcher_thread_trigger.set()
            thread.join(2.0)


class _ListenerConnection(TcpConnection):
    """secsgem's TcpServerConnection, but the port stays bound across reconnects (port 0 works)."""

    def __init__(self, settings: _ListenerSettings) -> None:
        super().__init__(settings)
        self._listener = settings.listener
        self._enabled = False
        self._stop_accept = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self.on_disconnected.register(self._disconnected)

    def _disconnected(self, _: dict[str, Any]) -> None:
        if self._enabled:
            self._start_accept()

    def enable(self) -> None:
        if not self._enabled:
            self._enabled = True
            self._stop_accept.clear()
            self._start_accept()

    def disable(self) -> None:
        if self._enabled:
            self._enabled = False
            self._stop_accept.set()
            thread = self._accept_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(2.0)
            self.disconnect()

    def _start_accept(self) -> None:
        # Started before it is published: disable() may join it from another thread.
        thread = threading.Thread(
            target=self._accept_loop, daemon=True, name=f"gemsim-accept-{self._settings.port}")
        thread.start()
        self._accept_thread = thread

    def _accept_loop(self) -> None:
        # The previous receiver thread resets its flags after on_disconnected: let it finish.
        while self._thread_running and not self._stop_accept.is_set():
            time.sleep(0.01)
        while not self._stop_accept.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                sock, _ = self._listener.accept()
            except OSError:
                if self._listener.fileno() < 0:
                    return
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setblocking(False)
            self._sock = sock
            self._connected = True
            # secsgem starts the receiver first; a host that sends Select.req at once then
            # races the protocol's CONNECTED transition and stays NOT SELECTED. Connect first.
            try:
                self.on_connected({"source": self})
            except Exception:
                log.exception("gem sim: on_connected handler failed")
            self._start_receiver()
            return

    def kill(self) -> None:
        """Close the TCP connection at once, without Separate.req (a tool that drops)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Spooled(msgspec.Struct):
    function: Any  # SecsStreamFunction
    what: str


class _SimHandler(secsgem.gem.GemEquipmentHandler):
    """The secsgem equipment model of one fabd-sim tool."""

    def __init__(self, config: GemToolSimConfig, settings: _ListenerSettings,
                 sim: GemToolSim) -> None:
        self._cfg = config
        self._sim = sim
        self._lock = threading.RLock()
        super().__init__(settings, initial_control_state="ATTEMPT_ONLINE",
                         initial_online_control_state="REMOTE")
        self._mdln = "fabd-sim"
        self._softrev = "1.0"
        self._rng = random.Random(config.seed)
        self._process_state = ProcessState.IDLE
        self._e10_state = config.initial_e10_state
        self._e10_reason = ""
        self._pp_exec_name = ""
        self._lot_id = ""
        self._last_lot_id = ""
        self._lot_result = 0
        self._params: dict[str, float] = dict(config.set_points)
        self._last_control_state = -1
        self._outbox: queue.Queue[_Spooled | None] = queue.Queue()
        self._spool: list[_Spooled] = []
        self._dataid = 0
        self._stopping = threading.Event()
        self._lot_stop = threading.Event()
        self._lot_resume = threading.Event()
        self._lot_resume.set()
        self._lot_thread: threading.Thread | None = None
        self._traces: dict[Any, threading.Event] = {}
        self._generation = 0  # +1 on every connection loss
        # secsgem 0.3 never calls on_connection_closed (a leftover of its older API): wire it.
        self.protocol.events.disconnected += self.on_connection_closed

        for svid, name, vtype in (
            (FabdSim.SV_CONTROL_STATE, "ControlState", sv.U1),
            (FabdSim.SV_PROCESS_STATE, "ProcessState", sv.U1),
            (FabdSim.SV_E10_STATE, "E10State", sv.String),
            (FabdSim.SV_PP_EXEC_NAME, "PPExecName", sv.String),
            (FabdSim.SV_CLOCK, "Clock", sv.String),
            (FabdSim.SV_CURRENT_LOT, "CurrentLotID", sv.String),
        ):
            self.status_variables[svid] = secsgem.gem.StatusVariable(svid, name, "", vtype)
        for dvid, name, vtype in (
            (FabdSim.DV_LOT_ID, "LotID", sv.String),
            (FabdSim.DV_RECIPE_ID, "RecipeID", sv.String),
            (FabdSim.DV_E10_REASON, "E10Reason", sv.String),
            (FabdSim.DV_LOT_RESULT, "LotResult", sv.U1),
            *((dvid, name, sv.F8) for dvid, name in FabdSim.PARAMETERS.items()),
        ):
            self.data_values[dvid] = secsgem.gem.DataValue(dvid, name, vtype)
        for ceid, name, dvids in (
            (FabdSim.CE_PROCESS_STARTED, "ProcessStarted",
             [FabdSim.DV_LOT_ID, FabdSim.DV_RECIPE_ID]),
            (FabdSim.CE_PROCESS_COMPLETED, "ProcessCompleted",
             [FabdSim.DV_LOT_ID, FabdSim.DV_RECIPE_ID, *FabdSim.PARAMETERS,
              FabdSim.DV_LOT_RESULT]),
            (FabdSim.CE_E10_CHANGED, "E10StateChanged", [FabdSim.DV_E10_REASON]),
            (FabdSim.CE_CONTROL_CHANGED, "ControlStateChanged", []),
            (FabdSim.CE_RECIPE_CHANGED, "RecipeChanged", []),
        ):
            self.collection_events[ceid] = secsgem.gem.CollectionEvent(ceid, name, dvids)
        for alid, text in FabdSim.ALARMS.items():
            # ce_on/ce_off point at the GEM built-ins we never link: the S5F1 is what matters.
            self.alarms[alid] = secsgem.gem.Alarm(alid, text, text, 2, 0, 0)
        self.recipes: dict[str, bytes] = dict(config.recipes)

    # ---- values --------------------------------------------------------------------------

    def on_sv_value_request(self, svid: Any, status_variable: Any) -> Any:
        key = status_variable.svid
        with self._lock:
            if key == FabdSim.SV_CONTROL_STATE:
                return sv.U1(max(self._get_control_state_id(), 0))
            if key == FabdSim.SV_PROCESS_STATE:
                return sv.U1(self._process_state)
            if key == FabdSim.SV_E10_STATE:
                return sv.String(self._e10_state)
            if key == FabdSim.SV_PP_EXEC_NAME:
                return sv.String(self._pp_exec_name)
            if key == FabdSim.SV_CLOCK:
                now = dt.datetime.now(dt.UTC)
                return sv.String(now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 10000:02d}")
            if key == FabdSim.SV_CURRENT_LOT:
                kept = self._last_lot_id if self._cfg.current_lot_kept else ""
                return sv.String(self._lot_id or kept)
        return status_variable.value_type(status_variable.value)

    def _get_sv_value(self, status_variable: Any) -> Any:
        # fabd-sim SVIDs 1001-1005 collide with secsgem's built-in ones: ours win.
        if 1001 <= status_variable.svid <= 1006:
            return self.on_sv_value_request(status_variable.svid, status_variable)
        return super()._get_sv_value(status_variable)

    def on_dv_value_request(self, dvid: Any, data_value: Any) -> Any:
        key = data_value.dvid
        with self._lock:
            if key == FabdSim.DV_LOT_ID:
                return sv.String(self._lot_id)
            if key == FabdSim.DV_RECIPE_ID:
                return sv.String(self._pp_exec_name)
            if key == FabdSim.DV_E10_REASON:
                return sv.String(self._e10_reason)
            if key == FabdSim.DV_LOT_RESULT:
                return sv.U1(self._lot_result)
            if key in FabdSim.PARAMETERS:
                return sv.F8(self._params[FabdSim.PARAMETERS[key]])
        return data_value.value_type(data_value.value)

    def _vid_value(self, vid: Any) -> Any:
        if vid in self.status_variables:
            return self._get_sv_value(self.status_variables[vid])
        if vid in self.data_values:
            return self._get_dv_value(self.data_values[vid])
        return None

    def _sample_parameters(self) -> None:
        """Draw fresh process values around the set points (plus the shift/drift knobs)."""
        with self._lock:
            for name, set_point in self._cfg.set_points.items():
                offset = self._sim._shift.get(name, 0.0) + self._sim._drift_total.get(name, 0.0)
                sigma = self._cfg.noise_sigma.get(name, 0.0)
                self._params[name] = set_point + offset + self._rng.gauss(0.0, sigma)

    # ---- outbound: events and alarms, in order, spooled while no host listens ---------------

    def _communicating(self) -> bool:
        return (self._communication_state.current
                == CommunicationState.COMMUNICATING
                and self.protocol.connection_state.current
                == ConnectionState.CONNECTED_SELECTED)

    def emit_event(self, ceid: int) -> bool:
        """Snapshot the reports linked to `ceid` now and queue the S6F11; False when not enabled."""
        with self._lock:
            link = self.registered_collection_events.get(ceid)
            if link is None or not link.enabled:
                return False
            reports = self._build_collection_event(ceid)
            self._dataid += 1
            function = self.stream_function(6, 11)(
                {"DATAID": self._dataid, "CEID": ceid, "RPT": reports})
        self._outbox.put(_Spooled(function=function, what=f"S6F11 CEID {ceid}"))
        return True

    def emit_alarm(self, alid: int, on: bool) -> None:
        """Queue an S5F1 for an alarm change (sent only if the host enabled the alarm)."""
        with self._lock:
            alarm = self.alarms[alid]
            if alarm.set == on:
                return
            alarm.set = on
            if not alarm.enabled:
                return
            alcd = alarm.code | (0x80 if on else 0)
            function = self.stream_function(5, 1)({"ALCD": alcd, "ALID": alid, "ALTX": alarm.text})
        self._outbox.put(_Spooled(function=function, what=f"S5F1 ALID {alid} {'set' if on else 'clear'}"))

    def request(self, function: SecsStreamFunction, timeout_s: float | None = None) -> Any:
        """Send a primary with the W-bit set and wait for its reply (None: no reply, link down)."""
        protocol = self.protocol
        system = protocol.get_next_system_counter()
        replies = protocol._get_queue_for_system(system)
        message = HsmsMessage(
            HsmsStreamFunctionHeader(system, function.stream, function.function, True,
                                     self.settings.session_id),
            function.encode())
        generation = self._generation
        deadline = time.monotonic() + (timeout_s or self._cfg.t3_reply_timeout_s)
        try:
            if not protocol.send_message(message):
                return None
            # secsgem leaves a waiter hanging until T3 when the link drops: watch for it.
            while generation == self._generation and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # E5: the equipment reports its expired T3 with S9F9 and the stored header
                    self.send_stream_function(self.stream_function(9, 9)(message.header.encode()))
                    return None
                try:
                    return replies.get(True, min(0.05, remaining))
                except queue.Empty:
                    continue
            return None
        finally:
            protocol._remove_queue(system)

    def send_loop(self) -> None:
        """Send queued S6F11/S5F1 one at a time (each waits for its ack); spool when no host."""
        while not self._stopping.is_set():
            try:
                item = self._outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            for _attempt in range(3):
                with self._lock:
                    # E30: spool while no host communicates, and keep order behind the spool.
                    if self._spool or not self._communicating():
                        self._spool_item(item)
                        break
                sent_at = time.monotonic()
                if self.request(item.function) is not None:
                    self._sim._acks.append((item.what, sent_at, time.monotonic()))
                    break
                log.info("tool %s: no ack for %s", self._cfg.tool_id, item.what)
                with self._lock:
                    if not self._communicating():
                        # the host left before it acknowledged: spool, do not count it lost
                        self._spool_item(item)
                        break
            else:
                self._sim._lost.append(item.what)

    def _spool_item(self, item: _Spooled) -> None:
        if self._cfg.spool_max_messages <= 0:
            self._sim._lost.append(item.what)
            return
        if len(self._spool) >= self._cfg.spool_max_messages:
            self._sim._lost.append(self._spool.pop(0).what)  # E30 overwrite-spool: oldest goes
        self._spool.append(item)
        log.info("tool %s: spooled %s (%d in spool)", self._cfg.tool_id, item.what,
                 len(self._spool))

    def _on_s06f23(self, handler: Any, message: Any) -> Any:
        """Answer the host's spooled-data request: RSDC 0 transmit, 1 purge."""
        rsdc = self.settings.streams_functions.decode(message).get()
        with self._lock:
            if rsdc == 0 and self._spool and self._sim._spool_busy > 0:
                self._sim._spool_busy -= 1
                return self.stream_function(6, 24)(1)  # RSDA 1: busy, try later
            spooled, self._spool = self._spool, []
        if not spooled:
            return self.stream_function(6, 24)(2)  # RSDA 2: no spooled data
        if rsdc == 1:
            log.info("tool %s: host purged %d spooled messages", self._cfg.tool_id, len(spooled))
            return self.stream_function(6, 24)(0)
        # Put the spooled messages back in front of anything queued since, in order.
        pending = []
        while True:
            try:
                pending.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        for item in [*spooled, *pending]:
            self._outbox.put(item)
        return self.stream_function(6, 24)(0)

    # ---- state changes ---------------------------------------------------------------------

    def check_control_state(self) -> None:
        """Emit CE ControlStateChanged when the GEM control state moved."""
        current = self._get_control_state_id()
        if current != self._last_control_state:
            self._last_control_state = current
            self.emit_event(FabdSim.CE_CONTROL_CHANGED)

    def set_e10(self, state: str, reason: str) -> None:
        with self._lock:
            if state == self._e10_state:
                return
            self._e10_state = state
            self._e10_reason = reason
        self.emit_event(FabdSim.CE_E10_CHANGED)

    def on_commack_requested(self) -> int:
        """COMMACK for the host's S1F13: 1 (denied) while the refuse knob counts down."""
        if self._sim._refuse_comm > 0:
            self._sim._refuse_comm -= 1
            return 1
        return 0

    def _on_communicating(self, data: Any) -> None:
        # A new host selected before secsgem processed the old connection's loss: catch up.
        if self._communication_state.current == CommunicationState.COMMUNICATING:
            self._communication_state.communicationfail()
        super()._on_communicating(data)

    def on_connection_closed(self, connection: Any) -> None:
        self._generation += 1
        super().on_connection_closed(connection)
        self.check_control_state()
        self._sim._on_disconnect()

    def _on_s01f15(self, handler: Any, message: Any) -> Any:
        reply = super()._on_s01f15(handler, message)
        self.check_control_state()
        return reply

    def _on_s01f17(self, handler: Any, message: Any) -> Any:
        reply = super()._on_s01f17(handler, message)
        self.check_control_state()
        return reply

    def _on_s02f31(self, handler: Any, message: Any) -> Any:
        """Accept the host's clock (we only check the format: YYYYMMDDhhmmsscc or YYMMDDhhmmss)."""
        text = self.settings.streams_functions.decode(message).get()
        ok = isinstance(text, str) and text.isdigit() and len(text) in (12, 14, 16)
        self._sim.clock_set_to = text
        return self.stream_function(2, 32)(0 if ok else 1)

    # ---- remote commands ---------------------------------------------------------------------

    def _on_s02f41(self, handler: Any, message: Any) -> Any:
        function = self.settings.streams_functions.decode(message)
        rcmd = function.RCMD.get()
        params = {p["CPNAME"]: p["CPVAL"] for p in function.PARAMS.get()}
        hcack = self._remote_command(str(rcmd), params)
        self._sim._commands.append((str(rcmd), params, hcack))
        return self.stream_function(2, 42)({"HCACK": hcack, "PARAMS": []})

    def _remote_command(self, rcmd: str, params: dict[str, Any]) -> int:
        known = {"PP-SELECT": {"PPID"}, "START": {"LOTID", "WAFERS"}, "STOP": set(),
                 "PAUSE": set(), "RESUME": set(), "ABORT": set()}
        if rcmd not in known:
            return 1  # HCACK 1: command does not exist
        if set(params) - known[rcmd]:
            return 3  # HCACK 3: at least one parameter is invalid
        remote = self._control_state.current == ControlState.ONLINE_REMOTE
        with self._lock:
            state = self._process_state
            if not remote:
                return 2  # HCACK 2: cannot perform now (E30: host commands only in on-line remote)
            if rcmd == "PP-SELECT":
                ppid = str(params.get("PPID", ""))
                if ppid not in self.recipes:
                    return 3
                if state != ProcessState.IDLE:
                    return 2
                self._pp_exec_name = ppid
                self.emit_event(FabdSim.CE_RECIPE_CHANGED)
                return 0
            if rcmd == "START":
                lot_id = str(params.get("LOTID", ""))
                if not lot_id:
                    return 3
                if state != ProcessState.IDLE or not self._pp_exec_name:
                    return 2
                self._process_state = ProcessState.SETUP
                self._lot_id = lot_id
                self._lot_stop.clear()
                self._lot_resume.set()
                self._lot_thread = threading.Thread(
                    target=self._run_lot, daemon=True, name=f"gemsim-lot-{lot_id}")
                self._lot_thread.start()
                return 4  # HCACK 4: acknowledged, will be done later
            if rcmd in ("STOP", "ABORT"):
                if state not in (ProcessState.EXECUTING, ProcessState.PAUSED, ProcessState.SETUP):
                    return 2
                self._lot_result = 1 if rcmd == "ABORT" else self._lot_result
                self._lot_stop.set()
                self._lot_resume.set()
                return 0
            if rcmd == "PAUSE":
                if state != ProcessState.EXECUTING:
                    return 2
                self._process_state = ProcessState.PAUSED
                self._lot_resume.clear()
                return 0
            # RESUME
            if state != ProcessState.PAUSED:
                return 2
            self._process_state = ProcessState.EXECUTING
            self._lot_resume.set()
            return 0

    def _run_lot(self) -> None:
        """Run one lot: CE ProcessStarted, the process time (pausable), CE ProcessCompleted."""
        with self._lock:
            self._lot_result = 0
            self._process_state = ProcessState.EXECUTING
        self.set_e10("productive", "lot started")
        self._sample_parameters()
        self.emit_event(FabdSim.CE_PROCESS_STARTED)
        remaining = self._sim.process_time_s
        while remaining > 0 and not self._lot_stop.is_set() and not self._stopping.is_set():
            if not self._lot_resume.is_set():
                self._lot_resume.wait(0.05)
                continue
            step = min(0.05, remaining)
            time.sleep(step)
            remaining -= step
        # hold_process(): the lot's time is up, but it ends only when the test says so
        while (not self._sim._end_gate.wait(0.05) and not self._lot_stop.is_set()
               and not self._stopping.is_set()):
            pass
        with self._lock:
            if self._lot_stop.is_set() and self._lot_result == 0:
                self._lot_result = 1  # a stopped lot did not get its full process
            for name, per_lot in self._sim._drift_per_lot.items():
                self._sim._drift_total[name] = self._sim._drift_total.get(name, 0.0) + per_lot
        self._sample_parameters()
        self.emit_event(FabdSim.CE_PROCESS_COMPLETED)
        with self._lock:
            self._process_state = ProcessState.IDLE
            self._sim._lots_done.append((self._lot_id, self._pp_exec_name, self._lot_result,
                                         dict(self._params)))
            self._last_lot_id, self._lot_id = self._lot_id, ""
        self.set_e10("standby", "lot completed")

    def resend_completion(self, lot_id: str) -> bool:
        """Emit CE ProcessCompleted again for a lot finished before, with what it ended with."""
        done = [d for d in self._sim._lots_done if d[0] == lot_id]
        if not done:
            raise ValueError(f"lot {lot_id!r} was not run here")
        _, recipe, result, params = done[-1]
        with self._lock:   # the report is built from these now, then they are put back
            saved = (self._lot_id, self._pp_exec_name, self._lot_result, self._params)
            self._lot_id, self._pp_exec_name, self._lot_result = lot_id, recipe, result
            self._params = dict(params)
            try:
                return self.emit_event(FabdSim.CE_PROCESS_COMPLETED)
            finally:
                self._lot_id, self._pp_exec_name, self._lot_result, self._params = saved

    # ---- process programs -----------------------------------------------------------------

    def _on_s07f03(self, handler: Any, message: Any) -> Any:
        function = self.settings.streams_functions.decode(message)
        with self._lock:
            self.recipes[str(function.PPID.get())] = _to_bytes(function.PPBODY.get())
        return self.stream_function(7, 4)(0)

    def _on_s07f05(self, handler: Any, message: Any) -> Any:
        ppid = str(self.settings.streams_functions.decode(message).get())
        with self._lock:
            body = self.recipes.get(ppid)
        if body is None:
            # E5: a zero-length list means "PPID not found"; secsgem cannot encode that shape.
            self._reply_raw(message, 7, 6, b"\x01\x00")
            return None
        return self.stream_function(7, 6)({"PPID": ppid, "PPBODY": sv.Binary(body)})

    def _on_s07f17(self, handler: Any, message: Any) -> Any:
        ppids = [str(p) for p in self.settings.streams_functions.decode(message).get()]
        with self._lock:
            if not ppids:
                self.recipes.clear()
                return self.stream_function(7, 18)(0)
            if any(p not in self.recipes for p in ppids):
                return self.stream_function(7, 18)(4)  # ACKC7 4: PPID not found
            for ppid in ppids:
                del self.recipes[ppid]
        return self.stream_function(7, 18)(0)

    def _on_s07f19(self, handler: Any, message: Any) -> Any:
        with self._lock:
            return self.stream_function(7, 20)(sorted(self.recipes))

    def _reply_raw(self, message: Any, stream: int, function: int, body: bytes) -> None:
        reply = HsmsMessage(HsmsStreamFunctionHeader(
            message.header.system, stream, function, False, self.settings.session_id), body)
        self.protocol.send_message(reply)

    # ---- trace -------------------------------------------------------------------------------

    def _on_s02f23(self, handler: Any, message: Any) -> Any:
        function = self.settings.streams_functions.decode(message)
        trid = function.TRID.get()
        totsmp = int(function.TOTSMP.get())
        repgsz = int(function.REPGSZ.get()) or 1
        vids = list(function.SVID.get())
        old = self._traces.pop(trid, None)
        if old is not None:
            old.set()
        if totsmp == 0:
            return self.stream_function(2, 24)(0)  # E5: TOTSMP 0 ends the trace
        try:
            period_s = _dsper_to_s(str(function.DSPER.get()))
        except ValueError:
            return self.stream_function(2, 24)(3)  # TIAACK 3: invalid period
        if period_s <= 0:
            return self.stream_function(2, 24)(3)
        if any(v not in self.status_variables and v not in self.data_values for v in vids):
            return self.stream_function(2, 24)(4)  # TIAACK 4: unknown SVID
        stop = threading.Event()
        self._traces[trid] = stop
        threading.Thread(target=self._trace_loop, args=(trid, period_s, totsmp, repgsz, vids, stop),
                         daemon=True, name=f"gemsim-trace-{trid}").start()
        return self.stream_function(2, 24)(0)

    def _trace_loop(self, trid: Any, period_s: float, totsmp: int, repgsz: int,
                    vids: list[Any], stop: threading.Event) -> None:
        sample = 0
        group: list[Any] = []
        while sample < totsmp and not stop.wait(period_s) and not self._stopping.is_set():
            sample += 1
            self._sample_parameters()
            group.extend(self._vid_value(v) for v in vids)
            if sample % repgsz and sample < totsmp:
                continue
            if self._communicating():
                now = dt.datetime.now(dt.UTC)
                stime = now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 10000:02d}"
                function = self.stream_function(6, 1)(
                    {"TRID": trid, "SMPLN": sample, "STIME": stime, "SV": group})
                self.send_stream_function(function)
                self._sim._traces_sent += 1
            group = []

    # ---- terminal and HSMS-level knobs ------------------------------------------------------

    def _on_s10f03(self, handler: Any, message: Any) -> Any:
        function = self.settings.streams_functions.decode(message)
        self._sim.terminal_received.append(str(function.TEXT.get()))
        return self.stream_function(10, 4)(0)

    def send_response(self, *args: Any, **kwargs: Any) -> Any:
        delay = self._sim.reply_delay_s
        if delay > 0:
            time.sleep(delay)
        return super().send_response(*args, **kwargs)

    def _on_message_received(self, data: dict[str, Any]) -> None:
        header = data["message"].header
        key = (header.stream, header.function)
        self._sim._received.append(key)
        if key in self._sim.unsupported:
            # As secsgem answers an unknown function: S9F5 carrying the offending header.
            if header.require_response:
                self.send_response(self.stream_function(9, 5)(header.encode()), header.system)
            return
        if key in self._sim.unanswered:
            return  # as secsgem 0.3 drops a message it cannot decode (S2F31): the host waits T3
        if key in self._sim._drop_on:
            self._sim._drop_on.discard(key)
            log.info("tool %s: dropping the connection on S%dF%d", self._cfg.tool_id, *key)
            self.protocol._connection.kill()
            return
        super()._on_message_received(data)


class GemToolSim:
    """One simulated GEM tool on a passive HSMS port; `async start()` / `stop()`, knobs for tests."""

    def __init__(self, config: GemToolSimConfig | None = None) -> None:
        self.config = config or GemToolSimConfig()
        self.reply_delay_s = 0.0
        self.process_time_s = self.config.process_time_s  # knob: the next lots' process time
        self.unsupported: set[tuple[int, int]] = set()  # knob: (S, F) answered with S9F5
        self.unanswered: set[tuple[int, int]] = set()  # knob: (S, F) never answered (host T3)
        self.terminal_received: list[str] = []
        self.clock_set_to = ""
        self._listener: socket.socket | None = None
        self._handler: _SimHandler | None = None
        self._sender: threading.Thread | None = None
        self._shift: dict[str, float] = {}
        self._drift_per_lot: dict[str, float] = {}
        self._drift_total: dict[str, float] = {}
        self._drop_on: set[tuple[int, int]] = set()
        self._acks: list[tuple[str, float, float]] = []  # (what, sent at, acked at), monotonic
        self._lost: list[str] = []
        self._commands: list[tuple[str, dict[str, Any], int]] = []
        self._lots_done: list[tuple[str, str, int, dict[str, float]]] = []
        self._received: list[tuple[int, int]] = []
        self._traces_sent = 0
        self._refuse_comm = 0
        self._spool_busy = 0
        self._end_gate = threading.Event()  # clear: lots do not end (hold_process)
        self._end_gate.set()
        self.disconnects = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the tool listens on (valid after `start()`)."""
        if self._listener is None:
            raise RuntimeError("GemToolSim not started")
        return self._listener.getsockname()[1]

    async def start(self) -> None:
        """Bind the port and start the equipment handler."""
        if self._listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.config.bind_host, self.config.port))
            listener.listen(4)
            self._listener = listener
        await asyncio.to_thread(self._start_handler)
        log.info("tool %s: GEM simulator listening on %s:%d", self.config.tool_id,
                 self.config.bind_host, self.port)

    def _start_handler(self) -> None:
        settings = _ListenerSettings(
            listener=self._listener,
            connect_mode=secsgem.hsms.HsmsConnectMode.PASSIVE,
            address=self.config.bind_host, port=self.port,
            session_id=self.config.device_id,
            device_type=secsgem.common.DeviceType.EQUIPMENT,
            streams_functions=_streams_functions(),
            establish_communication_timeout=self.config.establish_comm_delay_s,
            t3=self.config.t3_reply_timeout_s,
        )
        handler = _SimHandler(self.config, settings, self)
        self._handler = handler
        self._sender = threading.Thread(target=handler.send_loop, daemon=True,
                                        name=f"gemsim-send-{self.config.tool_id}")
        self._sender.start()
        handler.enable()

    def _stop_handler(self) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            return
        handler._stopping.set()
        for stop in handler._traces.values():
            stop.set()
        handler._lot_stop.set()
        handler._outbox.put(None)
        handler.disable()
        if self._sender is not None:
            self._sender.join(2.0)

    async def stop(self) -> None:
        """Stop the handler and close the port."""
        await asyncio.to_thread(self._stop_handler)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def __aenter__(self) -> GemToolSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def power_cycle(self) -> None:
        """Restart the tool on the same port: host-defined reports, links and enables are gone."""
        await asyncio.to_thread(self._stop_handler)
        await asyncio.to_thread(self._start_handler)

    @property
    def handler(self) -> _SimHandler:
        if self._handler is None:
            raise RuntimeError("GemToolSim not started")
        return self._handler

    def _on_disconnect(self) -> None:
        self.disconnects += 1

    # ---- what the tool saw (for tests) -------------------------------------------------------

    @property
    def communicating(self) -> bool:
        """True while a host is connected, selected and has established communications."""
        return self._handler is not None and self._handler._communicating()

    @property
    def acked(self) -> list[str]:
        """What the host acknowledged (S6F12/S5F2), in order: "S6F11 CEID 3001", ..."""
        return [what for what, _, _ in self._acks]

    @property
    def spooled(self) -> int:
        """How many messages wait in the spool."""
        return len(self.handler._spool)

    @property
    def lost(self) -> list[str]:
        """Messages dropped because the spool was full or disabled."""
        return list(self._lost)

    @property
    def commands(self) -> list[tuple[str, dict[str, Any], int]]:
        """Remote commands received: (RCMD, params, HCACK answered)."""
        return list(self._commands)

    @property
    def lots_done(self) -> list[tuple[str, str, int, dict[str, float]]]:
        """Lots finished: (lot id, recipe, LotResult, final parameters)."""
        return list(self._lots_done)

    @property
    def received(self) -> list[tuple[int, int]]:
        """(stream, function) of every data message the tool received from the host."""
        return list(self._received)

    @property
    def traces_sent(self) -> int:
        return self._traces_sent

    @property
    def enabled_ceids(self) -> list[int]:
        """CEIDs the host linked and enabled."""
        return sorted(c for c, link in self.handler.registered_collection_events.items()
                      if link.enabled)

    @property
    def enabled_alids(self) -> list[int]:
        return sorted(a for a, alarm in self.handler.alarms.items() if alarm.enabled)

    @property
    def recipes(self) -> dict[str, bytes]:
        return dict(self.handler.recipes)

    @property
    def process_state(self) -> int:
        return self.handler._process_state

    @property
    def control_state(self) -> int:
        """GEM control state id (1 equipment off-line .. 5 on-line remote)."""
        return self.handler._get_control_state_id()

    # ---- knobs -------------------------------------------------------------------------------

    def shift(self, parameter: str, delta: float) -> None:
        """Offset a process parameter by `delta` from now on (a step change for SPC)."""
        self._shift[parameter] = self._shift.get(parameter, 0.0) + delta

    def drift(self, parameter: str, per_lot: float) -> None:
        """Make a process parameter drift by `per_lot` after every completed lot."""
        self._drift_per_lot[parameter] = per_lot

    def reset_knobs(self) -> None:
        """Undo every test knob: no delays, drops, refusals or unsupported messages, no shifts."""
        self.reply_delay_s = 0.0
        self.process_time_s = self.config.process_time_s
        self.unsupported = set()
        self.unanswered = set()
        self._drop_on.clear()
        self._refuse_comm = 0
        self._spool_busy = 0
        self._end_gate.set()
        self.reset_process()

    def hold_process(self) -> None:
        """Lots do not end, once their process time is up, until `release_process()`: a lot
        still running at the moment a test chooses, however slow the machine."""
        self._end_gate.clear()

    def release_process(self) -> None:
        """Let held lots end (CE ProcessCompleted) and the next ones end on their own."""
        self._end_gate.set()

    def reset_process(self) -> None:
        """Forget every shift and drift: parameters go back around their set points."""
        self._shift.clear()
        self._drift_per_lot.clear()
        self._drift_total.clear()

    async def raise_alarm(self, alid: int) -> None:
        """Set an alarm (S5F1 with ALCD bit 7 when the host enabled it)."""
        await asyncio.to_thread(self.handler.emit_alarm, alid, True)

    async def clear_alarm(self, alid: int) -> None:
        """Clear an alarm (S5F1, ALCD bit 7 clear)."""
        await asyncio.to_thread(self.handler.emit_alarm, alid, False)

    async def set_e10(self, state: str, reason: str = "") -> None:
        """Change the E10 state (CE E10StateChanged)."""
        if state not in FabdSim.E10_STATES:
            raise ValueError(f"unknown E10 state {state!r}")
        await asyncio.to_thread(self.handler.set_e10, state, reason)

    async def set_control(self, state: str) -> None:
        """Operator switch: "online", "online_remote", "online_local", "offline" (CE 3004)."""
        handler = self.handler
        actions: dict[str, Callable[[], None]] = {
            "online": handler.control_switch_online,  # from equipment off-line (asks S1F1)
            "online_remote": handler.control_switch_online_remote,
            "online_local": handler.control_switch_online_local,
            "offline": handler.control_switch_offline,
        }
        await asyncio.to_thread(actions[state])
        await asyncio.to_thread(handler.check_control_state)

    async def resend_completion(self, lot_id: str) -> bool:
        """Send a finished lot's CE ProcessCompleted again (a tool re-reporting an end)."""
        return await asyncio.to_thread(self.handler.resend_completion, lot_id)

    async def emit_event(self, ceid: int) -> bool:
        """Trigger a collection event now; False when the host did not enable it."""
        return await asyncio.to_thread(self.handler.emit_event, ceid)

    async def send_terminal(self, text: str, tid: int = 0) -> bool:
        """Send an operator's terminal request (S10F1) to the host; True when acknowledged."""
        handler = self.handler
        function = handler.stream_function(10, 1)({"TID": tid, "TEXT": text})
        reply = await asyncio.to_thread(handler.request, function)
        return reply is not None

    async def send_primary(self, stream: int, function: int, body: bytes = b"",
                           timeout_s: float = 5.0) -> tuple[int, int, bytes] | None:
        """Send a raw primary (W-bit set) and wait for the reply: (stream, function, body)."""
        handler = self.handler

        def _send() -> tuple[int, int, bytes] | None:
            protocol = handler.protocol
            system = protocol.get_next_system_counter()
            replies = protocol._get_queue_for_system(system)
            message = HsmsMessage(HsmsStreamFunctionHeader(
                system, stream, function, True, handler.settings.session_id), body)
            try:
                protocol.send_message(message)
                reply = replies.get(True, timeout_s)
            except queue.Empty:
                return None
            finally:
                protocol._remove_queue(system)
            return reply.header.stream, reply.header.function, bytes(reply.data)

        return await asyncio.to_thread(_send)

    async def send_raw(self, frame: bytes) -> None:
        """Write bytes as they are on the HSMS connection (length prefix included)."""
        connection = self.handler.protocol._connection
        await asyncio.to_thread(connection.send_data, frame)

    def refuse_communication(self, times: int) -> None:
        """Answer the next `times` S1F13 with COMMACK 1 (denied)."""
        self._refuse_comm = times

    def spool_busy(self, times: int) -> None:
        """Answer the next `times` S6F23 transmit requests with RSDA 1 (busy) while spooling."""
        self._spool_busy = times

    def drop_on(self, stream: int, function: int) -> None:
        """Close the TCP connection, without answering, when the next SxFy arrives."""
        self._drop_on.add((stream, function))

    async def drop_connection(self) -> None:
        """Close the TCP connection now, without Separate.req."""
        self.handler.protocol._connection.kill()


def hsms_frame(stream: int, function: int, body: bytes, *, system: int, session_id: int = 0,
               wbit: bool = True) -> bytes:
    """Build one raw HSMS data frame (for tests that send malformed or odd messages)."""
    header = struct.pack(">HBBBBI", session_id, (0x80 if wbit else 0) | stream, function, 0, 0,
                         system)
    return struct.pack(">I", len(header) + len(body)) + header + body


def main(argv: list[str] | None = None) -> int:
    """Serve one simulated GEM tool until interrupted (for demos and manual tests)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m equipment.sim.gem_tool",
                                     description="A fabd-sim GEM tool on a passive HSMS port.")
    parser.add_argument("--tool-id", default="SIM01")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0: pick a free port")
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--process-time", type=float, default=5.0, help="seconds per lot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = GemToolSimConfig(tool_id=args.tool_id, bind_host=args.host, port=args.port,
                              device_id=args.device_id, process_time_s=args.process_time)

    async def serve() -> None:
        async with GemToolSim(config) as sim:
            print(f"{config.tool_id}: HSMS passive on {config.bind_host}:{sim.port}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
