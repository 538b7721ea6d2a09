"""A lightweight asyncio equipment farm: hundreds or thousands of simulated GEM tools, one process.

Each tool is a passive HSMS-SS endpoint (our transport, one port per tool on
127.0.0.1) that answers a real GEM host with the shared "fabd-sim" numbering:
S1F1/F3/F13/F15/F17, S2F13/F31/F33/F35/F37/F41/F23, S5F3, S6F23, S7F3/F5/F17/F19,
S10F3; it sends S6F11 collection events built from the host's report
definitions (W-bit, waiting for S6F12) and S5F1 alarms, spools events that
happen while no host is connected (sent on S6F23) and answers trace requests
(S2F23) with S6F1 samples. Remote commands run
lots for their process time: PP-SELECT, START (CE 3001 … process time … CE
3002), STOP, PAUSE, RESUME, ABORT.

Load mode (`event_rate_hz` > 0) makes every SELECTED tool emit S6F11 at that
rate and measures send → S6F12 latency (the HSMS benchmark reads it). A bare
HSMS host gets them at once (the typical 2 x 10 value report); a GEM host once
it has enabled `load_ceid`, built from its own report definitions.

Library use:

    farm = EquipmentFarm(FarmConfig(tools=200))
    await farm.start()                 # listening; farm.tools[i].tool_id / .port
    tg.create_task(farm.run(), name="farm")   # until farm.stop()
    await farm.tools[0].raise_alarm(5001); farm.tools[0].shift(2010, 5.0)

Command line (used by `python -m bench hsms`): `python -m equipment.sim.farm
--tools 1443 --rate 5` prints one JSON line with the ports, then answers the
stdin commands `stats`, `reset`, `quit` with JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import msgspec

from equipment.hsms import (
    HsmsConfig,
    HsmsError,
    HsmsPassive,
    HsmsSession,
    HsmsState,
    Message,
)
from equipment.secs import F8, U1, U4, A, B, Item, L, decode, encode, to_python

log = logging.getLogger("fabd.sim.farm")

# --- the shared "fabd-sim" numbering ---------------------------------------------------------
SV_CONTROL_STATE, SV_PROCESS_STATE, SV_E10_STATE = 1001, 1002, 1003
SV_PP_EXEC_NAME, SV_CLOCK, SV_CURRENT_LOT = 1004, 1005, 1006
DV_LOT_ID, DV_RECIPE_ID, DV_E10_REASON, DV_LOT_RESULT = 2001, 2002, 2003, 2004
DV_TEMPERATURE, DV_PRESSURE, DV_RF_POWER, DV_THICKNESS = 2010, 2011, 2012, 2013
CE_PROCESS_STARTED, CE_PROCESS_COMPLETED, CE_E10_CHANGED = 3001, 3002, 3003
CE_CONTROL_CHANGED, CE_RECIPE_CHANGED = 3004, 3005
CEIDS = (3001, 3002, 3003, 3004, 3005)
ALARMS = {5001: "chamber pressure high", 5002: "RF reflected power high",
          5003: "door interlock"}
# set point and noise sigma of the process parameters
PARAMETERS: dict[int, tuple[float, float]] = {
    DV_TEMPERATURE: (350.0, 0.5), DV_PRESSURE: (13.3, 0.05), DV_RF_POWER: (1200.0, 3.0),
    DV_THICKNESS: (97.5, 0.3)}
# GEM control states (SV 1001)
EQUIPMENT_OFFLINE, ATTEMPT_ONLINE, HOST_OFFLINE, ONLINE_LOCAL, ONLINE_REMOTE = 1, 2, 3, 4, 5
# process states (SV 1002)
IDLE, SETUP, EXECUTING, PAUSED = 0, 1, 2, 3
E10_STATES = ("productive", "standby", "engineering", "scheduled_down", "unscheduled_down",
              "non_scheduled")
# a report layout for load mode when the host defined none: 2 reports of 10 values
_LOAD_REPORTS = {100: [DV_LOT_ID, DV_RECIPE_ID, DV_TEMPERATURE, DV_PRESSURE, DV_RF_POWER,
                       DV_THICKNESS, DV_LOT_RESULT, SV_PROCESS_STATE, SV_E10_STATE,
                       SV_CURRENT_LOT],
                 101: [DV_LOT_ID, DV_RECIPE_ID, DV_TEMPERATURE, DV_PRESSURE, DV_RF_POWER,
                       DV_THICKNESS, DV_LOT_RESULT, SV_CONTROL_STATE, DV_E10_REASON,
                       SV_PP_EXEC_NAME]}
_ACK_OK = B(b"\x00")
_LOAD_REBUILD = 20  # load-mode events between two freshly sampled bodies
_DATAID = struct.Struct(">I")


class FarmConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How many tools, where they listen, how they behave."""

    tools: int = 10
    host: str = "127.0.0.1"
    base_port: int = 0  # 0: every tool's port is chosen by the OS; else base_port + index
    tool_prefix: str = "SIM"
    device_id: int = 0
    process_time_s: float = 5.0  # how long START runs a lot
    initial_control_state: int = HOST_OFFLINE  # S1F17 takes it to on-line remote
    recipes: tuple[str, ...] = ("RCP-ETCH-01", "RCP-DEP-02", "RCP-LITHO-03")
    event_rate_hz: float = 0.0  # load mode: S6F11 per second per SELECTED tool (0: off)
    load_ceid: int = CE_PROCESS_COMPLETED
    load_wbit: bool = True  # load events expect S6F12
    spool_max: int = 1000  # S6F11 kept per tool while no host is connected (E30 spooling)
    t3_reply_timeout_s: float = 45.0
    t7_not_selected_timeout_s: float = 10.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.tools < 1:
            raise ValueError("tools must be >= 1")
        if self.base_port and self.base_port + self.tools > 65536:
            raise ValueError("base_port + tools exceeds 65535")
        if self.event_rate_hz < 0 or self.process_time_s < 0:
            raise ValueError("event_rate_hz and process_time_s must be >= 0")


class LoadStats:
    """S6F11 counts and send → S6F12 latencies of the farm's load mode."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (e.g. after the warm-up)."""
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.latencies_s: list[float] = []
        self.since = time.monotonic()

    def summary(self) -> dict[str, Any]:
        """Return counts, the rate and latency percentiles since the last reset."""
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

        elapsed = time.monotonic() - self.since
        return {"sent": self.sent, "acked": self.acked, "failed": self.failed,
                "elapsed_s": elapsed, "acked_per_s": self.acked / elapsed if elapsed else 0.0,
                "p50_ms": pct(0.50) * 1e3, "p99_ms": pct(0.99) * 1e3,
                "max_ms": (lat[-1] * 1e3) if lat else float("nan")}


class FarmTool:
    """One simulated GEM process tool on its own passive HSMS port."""

    def __init__(self, farm: EquipmentFarm, index: int) -> None:
        cfg = farm.config
        self.farm = farm
        self.index = index
        self.tool_id = f"{cfg.tool_prefix}{index:04d}"
        self.hsms_config = HsmsConfig(
            host=cfg.host, port=(cfg.base_port + index) if cfg.base_port else 0, mode="passive",
            device_id=cfg.device_id, t3_reply_timeout_s=cfg.t3_reply_timeout_s,
            t7_not_selected_timeout_s=cfg.t7_not_selected_timeout_s, linktest_interval_s=0.0,
            e37_ranges=False)
        self.endpoint = HsmsPassive(self.tool_id, self.hsms_config, self.on_message)
        self.rng = random.Random(cfg.seed * 100_003 + index)
        self.control_state = cfg.initial_control_state
        self.process_state = IDLE
        self.e10_state = "standby"
        self.e10_reason = ""
        self.pp_exec_name = ""
        self.current_lot = ""
        self.lot_result = 0
        self.recipes: dict[str, bytes] = {
            name: f"recipe {name} for {self.tool_id}\n".encode() * 8 for name in cfg.recipes}
        self.reports: dict[int, list[int]] = {}
        self.links: dict[int, list[int]] = {}
        self.enabled_ceids: set[int] = set()
        self.enabled_alarms: set[int] = set()
        self.active_alarms: set[int] = set()
        self.last_values: dict[int, float] = {vid: sp for vid, (sp, _) in PARAMETERS.items()}
        self.offsets: dict[int, float] = dict.fromkeys(PARAMETERS, 0.0)
        self.drifts: dict[int, float] = dict.fromkeys(PARAMETERS, 0.0)
        self.clock_offset_s = 0.0
        self.commands: list[str] = []  # remote commands received, for tests
        self.lots_completed = 0
        self._dataid = 0
        self._lot_task: asyncio.Task | None = None
        self._resume = asyncio.Event()
        self._trace_tasks: dict[int, asyncio.Task] = {}
        self._load_template: bytearray | None = None
        self.events_configured = False  # the host sent S2F33/S2F35/S2F37 (else: a bare host)
        self.spool: list[L] = []  # S6F11 bodies produced while no host was connected
        self._load_uses = 0

    # --- convenience ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Return the TCP port this tool listens on."""
        return self.endpoint.port

    @property
    def session(self) -> HsmsSession | None:
        """Return the current host session, if SELECTED."""
        s = self.endpoint.session
        return s if s is not None and s.state is HsmsState.SELECTED else None

    def _next_dataid(self) -> int:
        self._dataid = (self._dataid + 1) & 0xFFFFFFFF
        return self._dataid

    def clock_text(self) -> str:
        """Return the equipment clock as YYYYMMDDhhmmsscc (SV 1005)."""
        t = time.time() + self.clock_offset_s
        return time.strftime("%Y%m%d%H%M%S", time.localtime(t)) + f"{int(t % 1 * 100):02d}"

    def value(self, vid: int) -> Item:
        """Return the SECS item of a status variable or data value (empty L when unknown)."""
        if vid == SV_CONTROL_STATE:
            return U1(self.control_state)
        if vid == SV_PROCESS_STATE:
            return U1(self.process_state)
        if vid == SV_E10_STATE:
            return A(self.e10_state)
        if vid == SV_PP_EXEC_NAME:
            return A(self.pp_exec_name)
        if vid == SV_CLOCK:
            return A(self.clock_text())
        if vid in (SV_CURRENT_LOT, DV_LOT_ID):
            return A(self.current_lot)
        if vid == DV_RECIPE_ID:
            return A(self.pp_exec_name)
        if vid == DV_E10_REASON:
            return A(self.e10_reason)
        if vid == DV_LOT_RESULT:
            return U1(self.lot_result)
        if vid in PARAMETERS:
            return F8(self.last_values[vid])
        return L()

    def _sample_parameters(self) -> None:
        worst = 0.0
        for vid, (sp, sigma) in PARAMETERS.items():
            self.offsets[vid] += self.drifts[vid]
            v = sp + self.offsets[vid] + self.rng.gauss(0.0, sigma)
            self.last_values[vid] = v
            worst = max(worst, abs(v - sp) / sigma)
        self.lot_result = 1 if worst > 4.0 else 0

    def shift(self, vid: int, delta: float) -> None:
        """Shift a process parameter's mean by `delta` from now on (so SPC fires)."""
        self.offsets[vid] += delta

    def drift(self, vid: int, per_lot: float) -> None:
        """Make a process parameter drift by `per_lot` on every lot from now on."""
        self.drifts[vid] = per_lot

    # --- sending ----------------------------------------------------------------------------

    def event_body(self, ceid: int, reports: dict[int, list[int]] | None = None) -> L:
        """Build the S6F11 body of a collection event from the linked report definitions."""
        if reports is None:
            reports = {rptid: self.reports.get(rptid, []) for rptid in self.links.get(ceid, ())}
        return L(U4(self._next_dataid()), U4(ceid),
                 L([L(U4(rptid), L([self.value(v) for v in vids]))
                    for rptid, vids in reports.items()]))

    def load_event(self, ceid: int) -> bytearray:
        """Return the encoded S6F11 body of a load-mode event (fresh DATAID every call).

        The body (parameters sampled anew) is rebuilt every _LOAD_REBUILD events and patched
        in place otherwise, so the farm can feed thousands of events per second.
        """
        template = self._load_template
        if template is None or self._load_uses >= _LOAD_REBUILD:
            self._sample_parameters()
            reports = ({r: self.reports.get(r, []) for r in self.links.get(ceid, ())}
                       or _LOAD_REPORTS)
            template = self._load_template = bytearray(encode(self.event_body(ceid, reports)))
            self._load_uses = 0
        else:
            # body = L[3] (2 bytes), U4 DATAID header (2 bytes), the 4 DATAID bytes
            _DATAID.pack_into(template, 4, self._next_dataid())
        self._load_uses += 1
        return template

    async def send_event(self, ceid: int) -> bool:
        """Send S6F11 for an enabled collection event and wait for S6F12; False if not sent."""
        if ceid not in self.enabled_ceids:
            return False
        session = self.session
        if session is None:
            # E30 spooling: keep what happened while the host was away, for S6F23
            if len(self.spool) < self.farm.config.spool_max:
                self.spool.append(self.event_body(ceid))
            return False
        try:
            await session.request(6, 11, self.event_body(ceid))
        except HsmsError as exc:
            log.debug("farm %s: CE %d not acknowledged: %s", self.tool_id, ceid, exc)
            return False
        return True

    async def raise_alarm(self, alid: int) -> None:
        """Set an alarm and send S5F1 (ALCD bit 7 set) if the host enabled it."""
        self.active_alarms.add(alid)
        await self._send_alarm(alid, True)

    async def clear_alarm(self, alid: int) -> None:
        """Clear an alarm and send S5F1 (ALCD bit 7 clear) if the host enabled it."""
        self.active_alarms.discard(alid)
        await self._send_alarm(alid, False)

    async def _send_alarm(self, alid: int, on: bool) -> None:
        session = self.session
        if session is None or alid not in self.enabled_alarms:
            return
        alcd = (0x80 if on else 0) | 0x04  # bit 7 set/clear; category 4: equipment safety
        with contextlib.suppress(HsmsError):
            await session.request(5, 1, L(B(bytes([alcd])), U4(alid), A(ALARMS.get(alid, ""))))

    async def set_e10(self, state: str, reason: str = "") -> None:
        """Change the E10 state and report CE 3003."""
        if state not in E10_STATES:
            raise ValueError(f"unknown E10 state {state!r}")
        self.e10_state, self.e10_reason = state, reason
        await self.send_event(CE_E10_CHANGED)

    async def set_control(self, state: int) -> None:
        """Change the GEM control state (1..5) and report CE 3004."""
        self.control_state = state
        await self.send_event(CE_CONTROL_CHANGED)

    # --- receiving --------------------------------------------------------------------------

    def on_message(self, session: HsmsSession, msg: Message) -> Any:
        """Answer one primary message from the host."""
        handler = _HANDLERS.get((msg.stream, msg.function))
        if handler is None:
            if msg.wbit:
                known_stream = any(s == msg.stream for s, _ in _HANDLERS)
                session.send_s9(5 if known_stream else 3, msg.header)
            return None
        try:
            return handler(self, session, msg)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            # a body that decodes but does not have the message's structure: illegal data
            log.warning("farm %s: %s with unexpected structure (%s); answering S9F7",
                        self.tool_id, msg.sf, exc)
            session.send_s9(7, msg.header)
            return None

    def _s1f1(self, session: HsmsSession, msg: Message) -> None:
        session.reply_nowait(msg, L(A("FABD-FARM"), A("1.0")))

    def _s1f3(self, session: HsmsSession, msg: Message) -> None:
        svids = [int(v[0]) for v in msg.body] if msg.body else [1001, 1002, 1003, 1004, 1005, 1006]
        session.reply_nowait(msg, L([self.value(v) if v < 2000 else L() for v in svids]))

    def _s1f11(self, session: HsmsSession, msg: Message) -> None:
        names = {1001: "ControlState", 1002: "ProcessState", 1003: "E10State",
                 1004: "PPExecName", 1005: "Clock", 1006: "CurrentLotID"}
        svids = [int(v[0]) for v in msg.body] if msg.body else list(names)
        session.reply_nowait(msg, L([L(U4(v), A(names.get(v, "")), A("")) for v in svids]))

    def _s1f13(self, session: HsmsSession, msg: Message) -> None:
        session.reply_nowait(msg, L(B(b"\x00"), L(A("FABD-FARM"), A("1.0"))))

    def _s1f15(self, session: HsmsSession, msg: Message) -> Any:
        session.reply_nowait(msg, B(b"\x00"))
        if self.control_state != HOST_OFFLINE:
            self.control_state = HOST_OFFLINE
            return self.send_event(CE_CONTROL_CHANGED)
        return None

    def _s1f17(self, session: HsmsSession, msg: Message) -> Any:
        if self.control_state in (ONLINE_LOCAL, ONLINE_REMOTE):
            session.reply_nowait(msg, B(b"\x02"))  # already on-line
            return None
        if self.control_state == EQUIPMENT_OFFLINE:
            session.reply_nowait(msg, B(b"\x01"))  # the operator keeps it off-line
            return None
        session.reply_nowait(msg, B(b"\x00"))
        self.control_state = ONLINE_REMOTE
        return self.send_event(CE_CONTROL_CHANGED)

    def _s2f13(self, session: HsmsSession, msg: Message) -> None:
        ecids = [int(v[0]) for v in msg.body] if msg.body else []
        session.reply_nowait(msg, L([L() for _ in ecids]))

    def _s2f31(self, session: HsmsSession, msg: Message) -> None:
        text = str(msg.body)
        tiack = 1
        if isinstance(msg.body, A) and len(text) in (12, 14, 16) and text.isdigit():
            fmt = "%y%m%d%H%M%S" if len(text) == 12 else "%Y%m%d%H%M%S"
            try:
                t = time.mktime(time.strptime(text[:12 if len(text) == 12 else 14], fmt))
                self.clock_offset_s = t - time.time()
                tiack = 0
            except ValueError:
                tiack = 1
        session.reply_nowait(msg, B(bytes([tiack])))

    def _s2f33(self, session: HsmsSession, msg: Message) -> None:
        self.events_configured = True
        _dataid, defs = msg.body
        if not defs:
            self.reports.clear()
            for ceid in self.links:
                self.links[ceid] = []
            session.reply_nowait(msg, B(b"\x00"))
            return
        drack = 0
        for rptid_item, vids in defs:
            rptid = rptid_item[0]
            if vids and rptid in self.reports:
                drack = 3  # RPTID already defined
            elif any(int(v[0]) not in _KNOWN_VIDS for v in vids):
                drack = 4  # VID does not exist
        if drack == 0:
            for rptid_item, vids in defs:
                rptid = rptid_item[0]
                if vids:
                    self.reports[rptid] = [int(v[0]) for v in vids]
                else:
                    self.reports.pop(rptid, None)
                    for ceid, rptids in self.links.items():
                        self.links[ceid] = [r for r in rptids if r != rptid]
        session.reply_nowait(msg, B(bytes([drack])))

    def _s2f35(self, session: HsmsSession, msg: Message) -> None:
        self.events_configured = True
        _dataid, links = msg.body
        lrack = 0
        for ceid_item, rptids in links:
            ceid = ceid_item[0]
            if ceid not in CEIDS:
                lrack = 4
            elif any(r[0] not in self.reports for r in rptids):
                lrack = 5
            elif rptids and self.links.get(ceid):
                lrack = 3
        if lrack == 0:
            for ceid_item, rptids in links:
                self.links[ceid_item[0]] = [r[0] for r in rptids]
        session.reply_nowait(msg, B(bytes([lrack])))

    def _s2f37(self, session: HsmsSession, msg: Message) -> None:
        self.events_configured = True
        ceed, ceids = msg.body
        wanted = [c[0] for c in ceids] or list(CEIDS)
        if any(c not in CEIDS for c in wanted):
            session.reply_nowait(msg, B(b"\x01"))
            return
        if ceed[0]:
            self.enabled_ceids.update(wanted)
        else:
            self.enabled_ceids.difference_update(wanted)
        session.reply_nowait(msg, B(b"\x00"))

    def _s2f23(self, session: HsmsSession, msg: Message) -> None:
        trid, dsper, totsmp, repgsz, svids = msg.body
        trid_v = to_python(trid)
        period = _dsper_s(str(dsper))
        vids = [int(v[0]) for v in svids]
        old = self._trace_tasks.pop(trid_v, None)
        if old is not None:
            old.cancel()
        if period is None or (vids and any(v not in _KNOWN_VIDS for v in vids)):
            session.reply_nowait(msg, B(b"\x01" if period is None else b"\x04"))
            return
        session.reply_nowait(msg, B(b"\x00"))
        total = int(to_python(totsmp) or 0)
        if total and vids:
            task = asyncio.get_running_loop().create_task(
                self._trace_loop(trid_v, period, total, max(1, int(to_python(repgsz) or 1)), vids),
                name=f"farm[{self.tool_id}].trace{trid_v}")
            self._trace_tasks[trid_v] = task

    async def _trace_loop(self, trid: Any, period_s: float, total: int, group: int,
                          vids: list[int]) -> None:
        smpln = 0
        while smpln < total:
            samples: list[Item] = []
            for _ in range(group):
                await asyncio.sleep(period_s)
                if self.process_state == EXECUTING:
                    self._sample_parameters()
                samples.extend(self.value(v) for v in vids)
                smpln += 1
            session = self.session
            if session is None:
                continue
            body = L(U4(trid) if isinstance(trid, int) else A(str(trid)), U4(smpln),
                     A(self.clock_text()), L(samples))
            with contextlib.suppress(HsmsError):
                await session.request(6, 1, body)

    def _s2f41(self, session: HsmsSession, msg: Message) -> Any:
        rcmd_item, params = msg.body
        rcmd = str(rcmd_item)
        cp = {str(name): to_python(val) for name, val in params}
        self.commands.append(rcmd)

        def answer(hcack: int, bad: list[tuple[str, int]] | None = None) -> None:
            session.reply_nowait(msg, L(B(bytes([hcack])),
                                        L([L(A(n), B(bytes([c]))) for n, c in bad or []])))

        if rcmd == "PP-SELECT":
            ppid = str(cp.get("PPID", ""))
            if "PPID" not in cp or ppid not in self.recipes:
                answer(3, [("PPID", 2)])
                return None
            if self.process_state != IDLE:
                answer(2)
                return None
            self.pp_exec_name = ppid
            answer(0)
            return self.send_event(CE_RECIPE_CHANGED)
        if rcmd == "START":
            if "LOTID" not in cp or not str(cp["LOTID"]):
                answer(3, [("LOTID", 2)])
                return None
            if (self.control_state != ONLINE_REMOTE or not self.pp_exec_name
                    or self.process_state != IDLE):
                answer(2)
                return None
            answer(4)  # will be done later: the lot runs now
            self.current_lot = str(cp["LOTID"])
            self.process_state = SETUP
            self._resume.set()
            self._lot_task = asyncio.get_running_loop().create_task(
                self._run_lot(), name=f"farm[{self.tool_id}].lot[{self.current_lot}]")
            return None
        if rcmd in ("STOP", "ABORT"):
            if self._lot_task is None or self._lot_task.done():
                answer(2)
                return None
            answer(0)
            self._lot_task.cancel()
            return None
        if rcmd == "PAUSE":
            if self.process_state != EXECUTING:
                answer(2)
                return None
            self.process_state = PAUSED
            self._resume.clear()
            answer(0)
            return None
        if rcmd == "RESUME":
            if self.process_state != PAUSED:
                answer(2)
                return None
            self.process_state = EXECUTING
            self._resume.set()
            answer(0)
            return None
        answer(1)  # no such command
        return None

    async def _run_lot(self) -> None:
        """Run the current lot: E10 productive, CE 3001, process time, CE 3002, back to idle."""
        lot = self.current_lot
        aborted = False
        try:
            self.process_state = EXECUTING
            self.e10_state, self.e10_reason = "productive", f"lot {lot}"
            await self.send_event(CE_E10_CHANGED)
            await self.send_event(CE_PROCESS_STARTED)
            remaining = self.farm.config.process_time_s
            loop = asyncio.get_running_loop()
            while remaining > 0:
                await self._resume.wait()
                t0 = loop.time()
                await asyncio.sleep(min(remaining, 0.1))
                if self.process_state == EXECUTING:
                    remaining -= loop.time() - t0
            self._sample_parameters()
        except asyncio.CancelledError:
            aborted = True
            self.lot_result = 1
        self.process_state = IDLE
        self.lots_completed += 1
        await self.send_event(CE_PROCESS_COMPLETED)
        self.current_lot = ""
        self.e10_state, self.e10_reason = "standby", "aborted" if aborted else "lot done"
        await self.send_event(CE_E10_CHANGED)

    def _s5f3(self, session: HsmsSession, msg: Message) -> None:
        aled, alid = msg.body
        ids = list(alid) if len(alid) else list(ALARMS)
        if any(a not in ALARMS for a in ids):
            session.reply_nowait(msg, B(b"\x01"))
            return
        if aled[0] & 0x80:
            self.enabled_alarms.update(ids)
        else:
            self.enabled_alarms.difference_update(ids)
        session.reply_nowait(msg, B(b"\x00"))

    def _s6f23(self, session: HsmsSession, msg: Message) -> Any:
        rsdc = to_python(msg.body)
        if not self.spool:
            session.reply_nowait(msg, B(b"\x02"))  # RSDA 2: no spooled data
            return None
        session.reply_nowait(msg, B(b"\x00"))
        spooled, self.spool = self.spool, []
        if rsdc == 1:  # purge
            return None
        return self._transmit_spool(session, spooled)

    async def _transmit_spool(self, session: HsmsSession, spooled: list[L]) -> None:
        """Send spooled S6F11s in the order they happened, each acknowledged before the next."""
        for body in spooled:
            try:
                await session.request(6, 11, body)
            except HsmsError as exc:
                log.debug("farm %s: spooled event not delivered: %s", self.tool_id, exc)
                return

    def _s7f3(self, session: HsmsSession, msg: Message) -> None:
        ppid, body = msg.body
        self.recipes[str(ppid)] = bytes(body) if isinstance(body, B) else str(body).encode()
        session.reply_nowait(msg, B(b"\x00"))

    def _s7f5(self, session: HsmsSession, msg: Message) -> None:
        ppid = str(msg.body)
        if ppid in self.recipes:
            session.reply_nowait(msg, L(A(ppid), B(self.recipes[ppid])))
        else:
            session.reply_nowait(msg, L())

    def _s7f17(self, session: HsmsSession, msg: Message) -> None:
        ppids = [str(p) for p in msg.body] if msg.body else list(self.recipes)
        if any(p not in self.recipes for p in ppids):
            session.reply_nowait(msg, B(b"\x04"))  # PPID not found
            return
        for p in ppids:
            del self.recipes[p]
        session.reply_nowait(msg, B(b"\x00"))

    def _s7f19(self, session: HsmsSession, msg: Message) -> None:
        session.reply_nowait(msg, L([A(p) for p in self.recipes]))

    def _s10f3(self, session: HsmsSession, msg: Message) -> None:
        session.reply_nowait(msg, B(b"\x00"))


_KNOWN_VIDS = frozenset({1001, 1002, 1003, 1004, 1005, 1006, 2001, 2002, 2003, 2004,
                         2010, 2011, 2012, 2013})
_HANDLERS: dict[tuple[int, int], Callable[[FarmTool, HsmsSession, Message], Any]] = {
    (1, 1): FarmTool._s1f1, (1, 3): FarmTool._s1f3, (1, 11): FarmTool._s1f11,
    (1, 13): FarmTool._s1f13, (1, 15): FarmTool._s1f15, (1, 17): FarmTool._s1f17,
    (2, 13): FarmTool._s2f13, (2, 23): FarmTool._s2f23, (2, 31): FarmTool._s2f31,
    (2, 33): FarmTool._s2f33, (2, 35): FarmTool._s2f35, (2, 37): FarmTool._s2f37,
    (2, 41): FarmTool._s2f41, (5, 3): FarmTool._s5f3, (6, 23): FarmTool._s6f23,
    (7, 3): FarmTool._s7f3, (7, 5): FarmTool._s7f5, (7, 17): FarmTool._s7f17,
    (7, 19): FarmTool._s7f19, (10, 3): FarmTool._s10f3,
}


def _dsper_s(text: str) -> float | None:
    """Parse DSPER (hhmmss or hhmmsscc) into seconds."""
    if not text.isdigit() or len(text) not in (6, 8):
        return None
    s = int(text[0:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])
    if len(text) == 8:
        s += int(text[6:8]) / 100
    return s if s > 0 else None


class EquipmentFarm:
    """Many FarmTools in one process; load mode emits S6F11 at a rate and measures the acks."""

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self.tools: list[FarmTool] = []
        self.stats = LoadStats()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Open every tool's listening port."""
        self.tools = [FarmTool(self, i) for i in range(self.config.tools)]
        for tool in self.tools:
            await tool.endpoint.start()
        log.info("farm: %d tools listening on %s ports %d..%d", len(self.tools),
                 self.config.host, min(t.port for t in self.tools),
                 max(t.port for t in self.tools))

    async def run(self) -> None:
        """Serve (and, in load mode, emit events) until stop()."""
        if not self.tools:
            await self.start()
        async with asyncio.TaskGroup() as tg:
            for tool in self.tools:
                tg.create_task(tool.endpoint.run(), name=f"farm[{tool.tool_id}]")
            if self.config.event_rate_hz > 0:
                tg.create_task(self._load_loop(), name="farm.load")
            await self._stop.wait()
            for tool in self.tools:
                tool.endpoint.stop()
                for task in [tool._lot_task, *tool._trace_tasks.values()]:
                    if task is not None:
                        task.cancel()

    def stop(self) -> None:
        """Ask run() to finish."""
        self._stop.set()

    async def _load_loop(self) -> None:
        """Emit S6F11 on every SELECTED tool at event_rate_hz, phases spread evenly."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        period = 1.0 / cfg.event_rate_hz
        n = len(self.tools)
        tick_s = 0.01
        next_due = [loop.time() + period * i / n for i in range(n)]
        stats = self.stats
        wbit = cfg.load_wbit
        ceid = cfg.load_ceid
        while not self._stop.is_set():
            now = loop.time()
            for i, tool in enumerate(self.tools):
                if next_due[i] > now:
                    continue
                next_due[i] += period
                if next_due[i] < now:  # fell behind (tool was away): do not burst
                    next_due[i] = now + period
                session = tool.session
                if session is None or (tool.events_configured and ceid not in tool.enabled_ceids):
                    continue  # a GEM host gets load events once it enabled them (E30)
                body = tool.load_event(ceid)
                stats.sent += 1
                if not wbit:
                    with contextlib.suppress(HsmsError):
                        session.send_nowait(6, 11, decode(bytes(body)))
                    continue
                try:
                    fut = session.request_nowait(6, 11, encoded_body=body)
                except HsmsError:
                    stats.failed += 1
                    continue
                fut.add_done_callback(_LatencyProbe(stats, perf_counter()).done)
            await asyncio.sleep(tick_s)


class _LatencyProbe:
    """Record send → S6F12 latency when the request task finishes."""

    __slots__ = ("sent_at", "stats")

    def __init__(self, stats: LoadStats, sent_at: float) -> None:
        self.stats = stats
        self.sent_at = sent_at

    def done(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.stats.failed += 1
            return
        self.stats.acked += 1
        self.stats.latencies_s.append(perf_counter() - self.sent_at)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve_cli(config: FarmConfig, use_stdin: bool = True) -> None:
    farm = EquipmentFarm(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, farm.stop)
    await farm.start()
    print(json.dumps({"tools": [t.tool_id for t in farm.tools],
                      "ports": [t.port for t in farm.tools]}), flush=True)
    if not use_stdin:
        await farm.run()
        return
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            raw = await reader.readline()
            line = raw.decode().strip()
            if not raw or line == "quit":  # our parent closed stdin, or asked us to stop
                farm.stop()
                return
            if line == "stats":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                out = farm.stats.summary()
                out["cpu_s"] = usage.ru_utime + usage.ru_stime
                out["selected"] = sum(1 for t in farm.tools if t.session is not None)
                print(json.dumps(out), flush=True)
            elif line == "reset":
                farm.stats.reset()
                print(json.dumps({"reset": True}), flush=True)

    async def serve(commands_task: asyncio.Task) -> None:
        await farm.run()
        commands_task.cancel()  # stopped by a signal: stop reading stdin too

    async with asyncio.TaskGroup() as tg:
        commands_task = tg.create_task(commands(), name="farm.commands")
        tg.create_task(serve(commands_task), name="farm")


def main(argv: list[str] | None = None) -> int:
    """Run a farm from the command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m equipment.sim.farm")
    p.add_argument("--tools", type=int, default=10)
    p.add_argument("--base-port", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="S6F11 per second per tool")
    p.add_argument("--process-time", type=float, default=5.0)
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--no-stdin", action="store_true",
                   help="ignore stdin (no stats/reset/quit commands); stop on SIGTERM/SIGINT")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_nofile()
    config = FarmConfig(tools=args.tools, base_port=args.base_port, event_rate_hz=args.rate,
                        process_time_s=args.process_time)
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_cli(config, use_stdin=not args.no_stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
