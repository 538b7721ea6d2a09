"""The GEM host session for one tool: start-up, event intake, remote control, over our HSMS.

Run `GemHostSession.run()` as a named task (`hsms[<tool_id>]`). It connects
(HSMS-SS active, reconnecting with jittered backoff), and on every SELECTED runs
the E30 start-up: S1F13 (retried every CommDelay until COMMACK 0), S1F17, S2F31,
S2F37 disable all, S2F33 delete all, S2F33 define, S2F35 link, S2F37 enable,
S5F3 per alarm, S7F19, S2F23 trace, S6F23 spooled data (asked again every second
while the tool answers RSDA 1 busy; then let it arrive: until no S6F11/S5F1 came for
spool_settle_s; both at most spool_drain_max_s), then the
S1F3 status read, whose values are the last word on control and E10 state, and
whose current lot / process state ToolConnected carries (`running_lot`) for the
daemon to check its record against. A tool that was power-cycled is therefore back
in sync without anyone touching it.
Steps a tool may not support (clock, alarms, recipes, trace, spool) are skipped
when it answers S9Fx, aborts (function 0), rejects them or leaves them unanswered
past T3 (secsgem 0.3 drops an S2F31 it cannot decode): one WARNING naming the tool
and the config option that turns the step off. An answered refusal is not sent again
while the session lives; a step unanswered past T3 in two completed start-ups in a row
is given up too (a reconnect does not wait T3 for it every time, and one slow answer
from a busy tool does not switch its alarms or trace off for good).

Primaries from the tool are handled in arrival order by one worker task, so the
HSMS reader never waits on the daemon: S6F11 → domain events →
`await sink.submit(events)` → only then S6F12; S5F1 → AlarmSet/AlarmCleared →
S5F2; S6F1 → `sink.points()` (and per-lot trace summaries added to
ProcessCompleted); S10F1/S10F3 → TerminalMessage; an unknown stream → S9F3, an
unknown function → S9F5, a malformed body → S9F7; the session carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

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
    RecipeReport,
    RemoteCommand,
    TerminalMessage,
    ToolConnected,
    ToolDisconnected,
)
from equipment.gem import messages as m
from equipment.gem.config import GemToolConfig
from equipment.gem.errors import (
    GemError,
    GemNotCommunicatingError,
    GemProtocolError,
    GemStartupError,
    GemTimeoutError,
)
from equipment.gem.messages import recipe_report
from equipment.gem.profile import EventTranslator, GemDriverProfile, get_profile
from equipment.hsms import HsmsActive
from equipment.hsms.errors import (
    HsmsConnectionLostError,
    HsmsError,
    HsmsNotSelectedError,
    HsmsRejectedError,
    HsmsReplyTimeoutError,
    HsmsStream9Error,
)
from equipment.hsms.message import HsmsState, Message
from equipment.hsms.session import HsmsSession
from equipment.secs import U1, A, B, Item, L, SecsDecodeError

log = logging.getLogger("fabd.gem")

HCACK_TEXT = {
    0: "done", 1: "command does not exist", 2: "cannot perform now", 3: "parameter invalid",
    4: "will be done later", 5: "rejected, already in desired condition", 6: "no such object",
}
# Streams a GEM host answers (anything else: S9F3 unrecognized stream).
_HOST_STREAMS = frozenset({1, 2, 5, 6, 7, 9, 10})
_TRID = 1
_MAX_OPEN_LOTS = 64  # per-lot trace summaries kept for lots still on the tool
_REPORTS = frozenset({(6, 11), (5, 1)})  # what a tool spools and the record follows
_SPOOL_BUSY_RETRY_S = 1.0  # S6F23 answered RSDA 1 (busy): ask again after this
_SKIPPED = object()  # an optional start-up step the tool does not support


# An optional start-up step left unanswered (T3) in this many completed start-ups in a row is
# taken as not supported (secsgem 0.3 never answers an S2F31 it cannot decode).
T3_STARTUPS_TO_GIVE_UP = 2


def _why(exc: GemError) -> str:
    """How the tool said it does not support a step: S9Fx, abort, reject or T3."""
    cause = exc.__cause__
    if isinstance(cause, HsmsStream9Error):
        return f"answered S9F{cause.s9_function}"
    if isinstance(cause, HsmsRejectedError):
        return f"rejected, reason {cause.reason}"
    if isinstance(exc, GemTimeoutError):
        return "no reply within T3"
    return str(exc)


class GemSessionState(msgspec.Struct, frozen=True, kw_only=True):
    """What the daemon can read about one tool's GEM session at any time."""

    hsms: HsmsState = HsmsState.NOT_CONNECTED  # E37: NOT_CONNECTED, NOT_SELECTED, SELECTED
    communicating: bool = False  # start-up finished; commands may be sent
    control: ControlState | None = None
    e10: E10State | None = None
    process_state: int | None = None
    recipe: str = ""  # PPExecName
    lot_id: str = ""  # current lot on the tool
    recipes: list[str] = []  # S7F19 at the last start-up
    connects_total: int = 0  # successful start-ups (1 = first, more = reconnects)
    spooled_requested: bool = False  # an S6F23 transmit was accepted at the last start-up


class _LotTrace:
    """Running per-lot statistics of trace values (count, sum, min, max)."""

    __slots__ = ("stats",)

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}

    def add(self, name: str, v: float) -> None:
        s = self.stats.get(name)
        if s is None:
            self.stats[name] = [1.0, v, v, v]
        else:
            s[0] += 1
            s[1] += v
            s[2] = min(s[2], v)
            s[3] = max(s[3], v)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (n, total, low, high) in self.stats.items():
            out[f"{name}_trace_mean"] = total / n
            out[f"{name}_trace_min"] = low
            out[f"{name}_trace_max"] = high
            out[f"{name}_trace_n"] = n
        return out


class GemHostSession:
    """One tool's GEM host session; implements equipment.events.ToolControl."""

    def __init__(self, config: GemToolConfig, sink: EventSink,
                 profile: GemDriverProfile | None = None) -> None:
        self.config = config
        self.tool_id = config.tool_id
        self.profile = profile or get_profile(config.profile)
        self._sink = sink
        self._translator = EventTranslator(config.tool_id, self.profile)
        self._state = GemSessionState()
        self._changed = asyncio.Event()
        self._link: HsmsActive | None = None
        # (the connection it came on, the primary) or events to submit in order
        self._inbox: asyncio.Queue[tuple[HsmsSession, Message] | list[DomainEvent]] | None = None
        self._startup_task: asyncio.Task | None = None
        self._dataid = 0
        # The spool replay (S6F11/S5F1, what a tool spools and the record follows), for the
        # start-up's settle: trace data (S6F1) and terminal messages do not hold it up.
        self._report_at = 0.0  # loop time an S6F11/S5F1 last arrived
        self._reports_open = 0  # S6F11/S5F1 queued or being handled (not answered yet)
        self._report_done_at = 0.0  # loop time the worker last answered one
        self._was_up = False
        self._lot_trace: dict[str, _LotTrace] = {}
        self._trace_names = [p.name for p in self.profile.trace]
        self._unsupported: set[tuple[int, int]] = set()  # optional start-up steps to skip
        self._unanswered: set[tuple[int, int]] = set()  # ... T3 in this start-up attempt
        # optional steps -> completed start-ups in a row that had a T3 on them: a step is given
        # up at T3_STARTUPS_TO_GIVE_UP (one slow answer from a busy tool must not switch its
        # alarms or trace off until fabd restarts)
        self._t3_startups: dict[tuple[int, int], int] = {}
        self._said_unsupported: set[tuple[int, int]] = set()  # the WARNING is out

    # ---- state ---------------------------------------------------------------------------

    @property
    def state(self) -> GemSessionState:
        """The current HSMS state, GEM control state and communicating flag."""
        return self._state

    def _set(self, **changes: Any) -> None:
        state = self._state
        if all(getattr(state, key) == value for key, value in changes.items()):
            return  # the hot path (every ProcessCompleted) changes nothing most of the time
        self._state = msgspec.structs.replace(state, **changes)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[GemSessionState], bool],
                       timeout_s: float = 30.0) -> GemSessionState:
        """Wait until `predicate(state)` holds (raises TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self._state):
                await self._changed.wait()
        return self._state

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, start up, serve and reconnect forever (until cancelled)."""
        self.config.validate(f"gem[{self.tool_id}]")
        self.profile.validate()
        # Unbounded: inbox_max bounds the tool's primaries (_on_primary); the few connection
        # events (ToolDisconnected, ToolConnected) must never be refused by it.
        self._inbox = asyncio.Queue()
        self._reports_open = 0  # a restart after a crash drops what the old inbox held
        link = HsmsActive(self.tool_id, self.config.hsms, self._on_primary,
                          on_selected=self._on_selected, on_lost=self._on_lost)
        link.add_state_listener(self._on_hsms_state)
        self._link = link
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.run(), name=f"hsms-link[{self.tool_id}]")
                tg.create_task(self._primary_loop(), name=f"gem-inbox[{self.tool_id}]")
        finally:
            link.stop()
            if self._startup_task is not None:
                self._startup_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._startup_task
            self._set(hsms=HsmsState.NOT_CONNECTED, communicating=False)

    def _on_hsms_state(self, state: HsmsState) -> None:
        self._set(hsms=state)

    def _on_selected(self, _session: HsmsSession) -> None:
        if self._startup_task is not None and not self._startup_task.done():
            self._startup_task.cancel()
        # Not a TaskGroup child on purpose: a loss cancels it, the next SELECTED starts anew;
        # run() cancels and awaits it on the way out.
        self._startup_task = asyncio.get_running_loop().create_task(
            self._startup_loop(), name=f"gem-startup[{self.tool_id}]")
        self._startup_task.add_done_callback(self._startup_done)

    def _startup_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not the tool: say so, and drop the connection so the next one starts clean.
        log.error("tool %s: GEM start-up crashed", self.tool_id, exc_info=task.exception())
        if self._link is not None and self._link.session is not None:
            self._link.session.close("GEM start-up crashed")

    def _on_lost(self, reason: str) -> None:
        if self._startup_task is not None and not self._startup_task.done():
            self._startup_task.cancel()
        was_communicating = self._state.communicating
        self._set(communicating=False)
        if was_communicating:
            # The HSMS supervisor already logged the one WARNING for this loss.
            log.debug("tool %s: GEM communications lost (%s)", self.tool_id, reason)
            self._submit_soon([ToolDisconnected(tool_id=self.tool_id, ts=time.time(),
                                                protocol="hsms", reason=reason)])

    def _submit_soon(self, events: list[DomainEvent]) -> None:
        """Queue events for the ordered worker (state changes seen outside a primary)."""
        if self._inbox is not None:
            self._inbox.put_nowait(events)

    # ---- start-up (E30 order) ------------------------------------------------------------

    async def _startup_loop(self) -> None:
        """Run the start-up; on a refusal or timeout retry after CommDelay while SELECTED."""
        level = logging.WARNING  # once per connection, then quieter
        while True:
            try:
                await self._startup()
                return
            except (GemTimeoutError, GemStartupError, GemProtocolError) as exc:
                log.log(level, "tool %s: GEM start-up failed (%s); retrying every %.1f s",
                        self.tool_id, exc, self.config.comm_retry_s)
                level = logging.DEBUG
                await asyncio.sleep(self.config.comm_retry_s)
            except GemNotCommunicatingError:
                return  # the link went down; the next SELECTED starts again

    async def _startup(self) -> None:
        p = self.profile
        self._unanswered.clear()
        # 1. S1F13 establish communications, retried every CommDelay until COMMACK 0 (E30).
        while True:
            try:
                reply = await self._request(1, 13, m.s1f13(), startup=True)
                if m.code(m.as_list(reply, "S1F14", 2)[0], "COMMACK") == 0:
                    break
                log.info("tool %s: S1F13 refused, retrying in %.1f s", self.tool_id,
                         self.config.comm_retry_s)
            except GemTimeoutError:
                log.info("tool %s: no S1F14, retrying in %.1f s", self.tool_id,
                         self.config.comm_retry_s)
            await asyncio.sleep(self.config.comm_retry_s)
        # 2. S1F17 request on-line: 0 accepted, 2 already on-line; 1 refused (operator keeps it).
        onlack = m.code(await self._request(1, 17, None, startup=True), "ONLACK")
        if onlack == 1:
            log.warning("tool %s: tool refused on-line (ONLACK 1)", self.tool_id)
        # 3. S2F31 set the equipment clock (optional: not every tool takes it).
        if self.config.set_clock:
            tiack = await self._optional(2, 31, m.clock_text(), "TIACK", "set_clock")
            if tiack:
                log.info("tool %s: clock set refused (TIACK %d)", self.tool_id, tiack)
        # 4. Events: disable all, delete all reports, define, link, enable; alarms. An event
        # the tool has between the disable and the enable is not reported (E30: disabled);
        # a lot completion lost that way is caught by the status read in step 6 (the daemon
        # holds the lot). Keeping a tool's old definitions instead would risk decoding
        # another host's reports with ours, which S6F15 cannot rule out (it shows no VIDs).
        await self._ack(2, 37, m.s2f37(False), "ERACK")
        await self._ack(2, 33, m.s2f33_delete_all(self._next_dataid()), "DRACK")
        if p.reports:
            await self._ack(2, 33, m.s2f33_define(
                self._next_dataid(), [(r.rptid, r.vids) for r in p.reports]), "DRACK")
        if p.links:
            await self._ack(2, 35, m.s2f35_link(
                self._next_dataid(), [(x.ceid, x.rptids) for x in p.links]), "LRACK")
            await self._ack(2, 37, m.s2f37(True, [x.ceid for x in p.links]), "ERACK")
        for alid in p.alids:
            ackc5 = await self._optional(5, 3, m.s5f3(True, alid), "ACKC5",
                                         f"alids of profile {p.name}")
            if ackc5:
                log.info("tool %s: alarm %d not enabled (ACKC5 %d)", self.tool_id, alid, ackc5)
        # 5. Recipes, trace, then what the tool spooled while we were away (E30 spooling).
        recipes: list[str] = []
        reply = await self._optional_reply(7, 19, None, "")
        if reply is not _SKIPPED:
            try:
                recipes = [str(m.value(x)) for x in m.as_list(reply, "S7F20")]
            except GemProtocolError as exc:
                log.info("tool %s: no recipe list at start-up (%s)", self.tool_id, exc)
        if self.config.trace_period_s > 0 and p.trace:
            tiaack = await self._optional(2, 23, m.s2f23(
                _TRID, self.config.trace_period_s, 0xFFFFFFFF, self.config.trace_group_size,
                [x.vid for x in p.trace]), "TIAACK", "trace_period_s")
            if tiaack:
                log.warning("tool %s: trace refused (TIAACK %d)", self.tool_id, tiaack)
        spooled = False
        asked_at = 0.0
        if self.config.request_spooled:
            wanted = True
            if p.vid_spool_count:
                count = (await self._read_status([p.vid_spool_count], startup=True)).get(
                    p.vid_spool_count)
                wanted = bool(m.integer_or_zero(count))
            if wanted:
                asked_at, spooled = await self._request_spool()
        if spooled and not await self._settle(asked_at):
            # Spooled messages are older than the status we are about to read: they should
            # arrive first, so the daemon ends on the current state, not a spooled one. A
            # tool that never goes quiet is still compared with the record, or a completion
            # it lost would leave its lot "in process" for ever; a spooled completion that
            # comes after the comparison still ends its step (the core lifts the hold).
            log.info("tool %s: spooled data still arriving after %.1f s; comparing what the "
                     "tool runs with the record now", self.tool_id,
                     self.config.spool_drain_max_s)
        # 6. Read the current state (after the spool, see above).
        status = await self._read_status(p.status_svids, startup=True) if p.status_svids else {}
        events = self._status_events(status)
        # The daemon compares what runs with its record (the core's reconcile_connected).
        running = self._running_lot(status)
        connects = self._state.connects_total + 1
        for sf in self._unanswered:   # the tool answered what came after: not a dying link
            self._t3_startups[sf] = self._t3_startups.get(sf, 0) + 1
            if self._t3_startups[sf] >= T3_STARTUPS_TO_GIVE_UP:
                self._unsupported.add(sf)
        self._set(communicating=True, recipes=recipes, connects_total=connects,
                  spooled_requested=spooled)
        if self._was_up:
            # The HSMS supervisor logged the one INFO "back" line; this is detail.
            log.debug("tool %s: GEM communicating again (%s, %s)", self.tool_id,
                      self._state.control, self._state.e10)
        else:
            log.info("tool %s: GEM session up (%s, %s, %d recipes)", self.tool_id,
                     self._state.control, self._state.e10, len(recipes))
        self._was_up = True
        peer = f"{self.config.hsms.host}:{self.config.hsms.port}"
        self._submit_soon([ToolConnected(tool_id=self.tool_id, ts=time.time(), protocol="hsms",
                                         peer=peer, running_lot=running,
                                         running_recipe=self._state.recipe if running else ""),
                           *events])

    async def _request_spool(self) -> tuple[float, bool]:
        """S6F23 transmit; on RSDA 1 (busy) ask again for up to spool_drain_max_s.

        Returns when it was accepted (loop time) and whether it was (RSDA 0). A spool left
        on the tool keeps growing: an E30 tool spools new messages behind it, so nothing it
        reports would reach fabd until the next reconnect.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.spool_drain_max_s
        while True:
            asked_at = loop.time()
            rsda = await self._optional(6, 23, U1(0), "RSDA", "request_spooled")
            if rsda != 1:
                return asked_at, rsda == 0
            if loop.time() + _SPOOL_BUSY_RETRY_S > deadline:
                log.warning("tool %s: spooled data not sent, the tool stayed busy (RSDA 1) "
                            "for %.1f s; its events may stay in its spool until the next "
                            "reconnect", self.tool_id, self.config.spool_drain_max_s)
                return asked_at, False
            await asyncio.sleep(_SPOOL_BUSY_RETRY_S)

    async def _settle(self, asked_at: float) -> bool:
        """Wait until the spool the tool announced (RSDA 0) is in; False if it did not settle.

        In: an event report or alarm (S6F11/S5F1) arrived since `asked_at`, then for
        spool_settle_s none arrived and none was waiting or being answered (the tool sends
        its next spooled message once we acknowledged the last). Trace data (S6F1) does not
        count: a tool tracing faster than spool_settle_s never went quiet. A tool whose
        events never pause is given spool_drain_max_s (the spool then interleaves with
        live events, which carry their own order).
        """
        settle = self.config.spool_settle_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.config.spool_drain_max_s
        while True:
            quiet = loop.time() - max(self._report_at, self._report_done_at, start)
            if self._report_at >= asked_at and quiet >= settle and not self._reports_open:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(max(0.01, settle - quiet), max(0.01, deadline - loop.time())))

    def _running_lot(self, status: dict[int, Any]) -> str | None:
        """The lot the status read says runs now: its id, "" for none, None if it does not say."""
        p = self.profile
        state = status.get(p.vid_process_state) if p.vid_process_state else None
        known = isinstance(state, int) and bool(p.process_idle_values)
        if known and state in p.process_idle_values:
            return ""
        if not p.vid_current_lot or p.vid_current_lot not in status:
            return None
        lot = str(status[p.vid_current_lot] or "")
        # busy with no lot id: something runs, which is unknown (a setup, a dummy run)
        return None if known and not lot else lot

    def _status_events(self, status: dict[int, Any]) -> list[DomainEvent]:
        """Turn the start-up status read into state and reconciling events."""
        p = self.profile
        now = time.time()
        events: list[DomainEvent] = []
        changes: dict[str, Any] = {}
        if p.vid_control_state in status:
            control = p.control_state(status[p.vid_control_state])
            changes["control"] = control
            if control is not None:
                events.append(ControlStateChanged(tool_id=self.tool_id, ts=now, state=control))
        if p.vid_e10_state in status:
            e10 = p.e10_state(status[p.vid_e10_state])
            changes["e10"] = e10
            if e10 is not None:
                events.append(E10StateChanged(tool_id=self.tool_id, ts=now, state=e10,
                                              reason="status read at connect"))
        if p.vid_process_state in status and isinstance(status[p.vid_process_state], int):
            changes["process_state"] = status[p.vid_process_state]
        if p.vid_pp_exec_name in status:
            changes["recipe"] = str(status[p.vid_pp_exec_name] or "")
        if p.vid_current_lot in status:
            # Not the variable as it is: an idle tool often keeps its last lot id there, and
            # trace data would go to that finished lot until the next start.
            changes["lot_id"] = self._running_lot(status) or ""
        self._set(**changes)
        return events

    async def _optional(self, stream: int, function: int, body: Item, what: str,
                        option: str) -> int | None:
        """Send a start-up step the tool may not support; its code, None when not supported."""
        reply = await self._optional_reply(stream, function, body, option)
        return None if reply is _SKIPPED else m.code(reply, what)

    async def _optional_reply(self, stream: int, function: int, body: Item | None,
                              option: str) -> Any:
        """Send a start-up step the tool may not support; its reply body, or _SKIPPED.

        Not supported: answered S9Fx, an abort (function 0) or a Reject.req, or not answered
        within T3 (secsgem 0.3 drops an S2F31 it cannot decode). E37: T3 fails that
        transaction only, so the start-up goes on without the step. A refused step is not
        sent again while this session lives; an unanswered one only after
        T3_STARTUPS_TO_GIVE_UP completed start-ups in a row left it unanswered (a link dying
        leaves steps unanswered in a start-up that fails; a busy tool may answer late once).
        """
        sf = (stream, function)
        if sf in self._unsupported or sf in self._unanswered:
            return _SKIPPED
        try:
            reply = await self._request(stream, function, body, startup=True)
        except (GemProtocolError, GemTimeoutError) as exc:
            t3 = isinstance(exc, GemTimeoutError)
            (self._unanswered if t3 else self._unsupported).add(sf)
            turn_off = f"; {option} in its config turns the step off" if option else ""
            level = logging.DEBUG if sf in self._said_unsupported else logging.WARNING
            self._said_unsupported.add(sf)
            again = (f"it is sent again at the next connect and given up after "
                     f"{T3_STARTUPS_TO_GIVE_UP} start-ups without an answer" if t3 else
                     "it is not sent again until fabd restarts")
            log.log(level, "tool %s: S%dF%d not supported (%s): GEM start-up goes on without "
                    "it; %s%s", self.tool_id, stream, function, _why(exc), again, turn_off)
            return _SKIPPED
        self._t3_startups.pop(sf, None)
        return reply

    async def _ack(self, stream: int, function: int, body: Item, what: str) -> None:
        ack = m.code(await self._request(stream, function, body, startup=True), what)
        if ack:
            raise GemStartupError(f"S{stream}F{function} refused ({what} {ack})")

    def _next_dataid(self) -> int:
        self._dataid = (self._dataid + 1) & 0xFFFFFFFF
        return self._dataid

    # ---- requests --------------------------------------------------------------------------

    async def _request(self, stream: int, function: int, body: Item | None,
                       startup: bool = False) -> Item | None:
        """Send a primary and return the reply body; typed errors on timeout / link loss."""
        link = self._link
        if link is None or (not startup and not self._state.communicating):
            raise GemNotCommunicatingError(f"tool {self.tool_id}: not communicating")
        what = f"S{stream}F{function}"
        try:
            reply = await link.request(stream, function, body)
        except HsmsReplyTimeoutError as exc:
            raise GemTimeoutError(f"tool {self.tool_id}: no reply to {what} within T3") from exc
        except (HsmsConnectionLostError, HsmsNotSelectedError) as exc:
            raise GemNotCommunicatingError(f"tool {self.tool_id}: {what}: {exc}") from exc
        except (HsmsStream9Error, HsmsRejectedError, SecsDecodeError) as exc:
            raise GemProtocolError(f"tool {self.tool_id}: {what}: {exc}") from exc
        if reply.stream != stream or reply.function != function + 1:
            raise GemProtocolError(f"tool {self.tool_id}: {what} answered with {reply.sf}")
        return reply.body

    async def command(self, rcmd: RemoteCommand | str, params: dict[str, str]) -> CommandResult:
        """Send a remote command (S2F41) and return the tool's HCACK."""
        name = rcmd.value if isinstance(rcmd, RemoteCommand) else str(rcmd)
        reply = m.as_list(await self._request(2, 41, m.s2f41(name, params)), "S2F42", 2)
        hcack = m.code(reply[0], "HCACK")
        reason = HCACK_TEXT.get(hcack, f"HCACK {hcack}")
        bad = [str(m.value(pair[0])) for pair in reply[1] if isinstance(pair, L) and pair]
        if bad:
            reason += f" ({', '.join(bad)})"
        if hcack not in (0, 4):
            log.info("tool %s: %s refused: %s", self.tool_id, name, reason)
        return CommandResult(accepted=hcack in (0, 4), code=hcack, reason=reason)

    async def recipe_list(self) -> list[str]:
        """List the process programs the tool holds (S7F19)."""
        recipes = await self._recipe_list()
        self._set(recipes=recipes)
        return recipes

    async def _recipe_list(self) -> list[str]:
        reply = await self._request(7, 19, None)
        return [str(m.value(x)) for x in m.as_list(reply, "S7F20")]

    async def recipe_upload(self, ppid: str) -> bytes:
        """Fetch a recipe body from the tool (S7F5); raises GemProtocolError when unknown."""
        reply = m.as_list(await self._request(7, 5, A(ppid)), "S7F6")
        if len(reply) != 2:
            raise GemProtocolError(f"tool {self.tool_id}: recipe {ppid!r} not on the tool")
        body = m.value(reply[1])
        if isinstance(body, str):
            return body.encode("latin-1")
        if isinstance(body, bytes):
            return body
        raise GemProtocolError(f"tool {self.tool_id}: recipe {ppid!r} body is {reply[1]!r}")

    async def recipe_report(self, ppid: str) -> RecipeReport:
        """Upload a recipe and return its sha256 as a RecipeReport (to verify against approved)."""
        body = await self.recipe_upload(ppid)
        return recipe_report(self.tool_id, ppid, body)

    async def recipe_download(self, ppid: str, body: bytes) -> bool:
        """Send a recipe body to the tool (S7F3); True when ACKC7 is 0."""
        reply = await self._request(7, 3, L(A(ppid), B(body)))
        ok = m.code(reply, "ACKC7") == 0
        if ok and ppid not in self._state.recipes:
            self._set(recipes=[*self._state.recipes, ppid])
        return ok

    async def recipe_delete(self, ppids: list[str]) -> bool:
        """Delete recipes on the tool (S7F17; an empty list deletes all); True when ACKC7 0."""
        reply = await self._request(7, 17, L(*(A(p) for p in ppids)))
        ok = m.code(reply, "ACKC7") == 0
        if ok:
            self._set(recipes=[p for p in self._state.recipes if ppids and p not in ppids])
        return ok

    async def read_status(self, svids: list[int]) -> dict[int, Any]:
        """Read status variables (S1F3); returns SVID → value."""
        return await self._read_status(svids)

    async def _read_status(self, svids: list[int], startup: bool = False) -> dict[int, Any]:
        reply = m.as_list(await self._request(1, 3, m.ids(svids), startup=startup), "S1F4")
        return {svid: m.value(v) for svid, v in zip(svids, reply, strict=False)}

    async def read_constants(self, ecids: list[int]) -> dict[int, Any]:
        """Read equipment constants (S2F13); returns ECID → value."""
        reply = m.as_list(await self._request(2, 13, m.ids(ecids)), "S2F14")
        return {ecid: m.value(v) for ecid, v in zip(ecids, reply, strict=False)}

    async def trace_init(self, trid: int, period_s: float, total_samples: int,
                         vids: list[int], group_size: int = 1) -> int:
        """Start (total_samples > 0) or stop (0) a trace (S2F23); returns TIAACK (0 = ok)."""
        return await self._trace_init(trid, period_s, total_samples, group_size, vids)

    async def _trace_init(self, trid: int, period_s: float, total_samples: int,
                          group_size: int, vids: list[int], startup: bool = False) -> int:
        body = m.s2f23(trid, period_s, total_samples, group_size, vids)
        return m.code(await self._request(2, 23, body, startup=startup), "TIAACK")

    async def spooled_data(self, purge: bool = False) -> int:
        """Ask the tool to transmit (or purge) its spooled messages (S6F23); returns RSDA.

        RSDA 0: done (transmitted messages arrive as usual), 1: busy, 2: nothing spooled.
        """
        return m.code(await self._request(6, 23, U1(1 if purge else 0)), "RSDA")

    async def send_terminal(self, text: str, tid: int = 0) -> bool:
        """Display a text on the tool's terminal (S10F3); True when ACKC10 is 0."""
        reply = await self._request(10, 3, L(B(bytes([tid])), A(text)))
        return m.code(reply, "ACKC10") == 0

    # ---- primaries from the tool ---------------------------------------------------------

    def _on_primary(self, session: HsmsSession, msg: Message) -> None:
        """Queue a primary for the ordered worker (called by the HSMS reader, never blocks)."""
        assert self._inbox is not None
        report = (msg.stream, msg.function) in _REPORTS
        if report:
            self._report_at = asyncio.get_running_loop().time()
        if self._inbox.qsize() >= self.config.inbox_max:
            # Bounded: the tool keeps the event (no ack) and re-sends or spools it.
            metrics.MALFORMED.labels(self.tool_id, "hsms").inc()
            log.warning("tool %s: inbox full, %s left unanswered", self.tool_id, msg.sf)
            return
        if report:
            self._reports_open += 1
        self._inbox.put_nowait((session, msg))

    async def _primary_loop(self) -> None:
        assert self._inbox is not None
        loop = asyncio.get_running_loop()
        while True:
            item = await self._inbox.get()
            try:
                await self._serve(item)
            finally:
                if not isinstance(item, list) and (item[1].stream, item[1].function) in _REPORTS:
                    self._reports_open -= 1
                    self._report_done_at = loop.time()

    async def _serve(self, item: tuple[HsmsSession, Message] | list[DomainEvent]) -> None:
        if isinstance(item, list):
            try:
                await self._sink.submit(item)
            except Exception:
                log.exception("tool %s: sink refused %d connection events", self.tool_id,
                              len(item))
            return
        session, msg = item
        try:
            await self._handle(session, msg)
        except GemProtocolError as exc:
            metrics.MALFORMED.labels(self.tool_id, "hsms").inc()
            log.warning("tool %s: malformed %s (%s); answered S9F7", self.tool_id, msg.sf,
                        exc)
            self._s9(session, 7, msg)
        except (HsmsError, GemNotCommunicatingError) as exc:
            # Lost while answering: the tool keeps what we did not acknowledge.
            log.debug("tool %s: %s not answered: %s", self.tool_id, msg.sf, exc)
        except GemError as exc:
            log.warning("tool %s: %s not handled: %s", self.tool_id, msg.sf, exc)
        except Exception:
            # The sink failed (store down?): no ack, so the tool keeps and re-sends it.
            log.exception("tool %s: %s not handled; left unacknowledged", self.tool_id,
                          msg.sf)

    async def _handle(self, session: HsmsSession, msg: Message) -> None:
        s, f = msg.stream, msg.function
        if s not in _HOST_STREAMS:
            log.info("tool %s: unrecognized stream %s; answered S9F3", self.tool_id, msg.sf)
            self._s9(session, 3, msg)
            return
        if (s, f) == (6, 11):
            _, ceid, reports = m.read_s6f11(msg.body)
            values = self._translator.values(reports)
            events = self._translator.translate(ceid, values)
            self._track(events)
            recipe = self._translator.selected_recipe(ceid, values)
            if recipe is not None:
                self._set(recipe=recipe)
            if events:
                await self._sink.submit(events)  # durable first ...
            await self._reply(session, msg, B(b"\x00"))  # ... then S6F12 ACKC6 0
        elif (s, f) == (5, 1):
            on, alid, text = m.read_s5f1(msg.body)
            kind = AlarmSet if on else AlarmCleared
            await self._sink.submit([kind(tool_id=self.tool_id, ts=time.time(), alid=alid,
                                          text=text)])
            await self._reply(session, msg, B(b"\x00"))
        elif (s, f) == (6, 1):
            _, _, _, values = m.read_s6f1(msg.body)
            self._trace_points(values)
            await self._reply(session, msg, B(b"\x00"))
        elif (s, f) in ((10, 1), (10, 3)):
            _, text = m.read_terminal(msg.body, msg.sf)
            await self._sink.submit([TerminalMessage(tool_id=self.tool_id, ts=time.time(),
                                                     text=text)])
            await self._reply(session, msg, B(b"\x00"))
        elif (s, f) == (1, 1):
            await self._reply(session, msg, L())
        elif (s, f) == (1, 13):
            await self._reply(session, msg, L(B(b"\x00"), L()))
        elif s == 9:
            log.warning("tool %s: the tool answered one of our messages with %s", self.tool_id,
                        msg.sf)
        elif f % 2 == 0:
            pass  # a late or stray secondary: nothing to answer
        else:
            log.info("tool %s: unrecognized function %s; answered S9F5", self.tool_id, msg.sf)
            self._s9(session, 5, msg)

    @staticmethod
    async def _reply(session: HsmsSession, msg: Message, body: Item | None) -> None:
        # On the connection the primary came on: after a reconnect it fails, never strays.
        if msg.wbit:
            await session.reply(msg, body)

    @staticmethod
    def _s9(session: HsmsSession, function: int, msg: Message) -> None:
        with contextlib.suppress(HsmsError):
            session.send_s9(function, msg.header)

    def _track(self, events: list[DomainEvent]) -> None:
        """Follow lots and states from events; attach trace summaries to ProcessCompleted."""
        for i, event in enumerate(events):
            if isinstance(event, ProcessStarted):
                if len(self._lot_trace) >= _MAX_OPEN_LOTS:  # lots whose end we never heard
                    self._lot_trace.pop(next(iter(self._lot_trace)))
                self._lot_trace[event.lot_id] = _LotTrace()
                self._set(lot_id=event.lot_id, recipe=event.recipe_id or self._state.recipe)
            elif isinstance(event, ProcessCompleted):
                trace = self._lot_trace.pop(event.lot_id, None)
                if trace is not None and trace.stats:
                    events[i] = msgspec.structs.replace(
                        event, parameters={**event.parameters, **trace.summary()})
                self._set(lot_id="")
            elif isinstance(event, E10StateChanged):
                self._set(e10=event.state)
            elif isinstance(event, ControlStateChanged):
                self._set(control=event.state)

    def _trace_points(self, values: list[Any]) -> None:
        names = self._trace_names
        if not names:
            return
        now = time.time()
        lot = self._state.lot_id
        trace = self._lot_trace.get(lot) if lot else None
        points = []
        for i, v in enumerate(values):
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            name = names[i % len(names)]
            points.append(ProcessPoint(self.tool_id, name, float(v), now, lot))
            if trace is not None:
                trace.add(name, float(v))
        if points:
            self._sink.points(points)


__all__ = ["HCACK_TEXT", "GemHostSession", "GemSessionState", "recipe_report"]
