"""The HSMS-SS session on one TCP connection: E37 states, select/deselect/linktest/separate/reject,
T6/T7 and periodic linktest, device-id and body checks (S9F1/S9F7), and the send/request API.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from equipment import metrics
from equipment.hsms.config import HsmsConfig
from equipment.hsms.errors import (
    HsmsConnectionLostError,
    HsmsControlTimeoutError,
    HsmsNotSelectedError,
    HsmsRejectedError,
    HsmsReplyTimeoutError,
    HsmsStream9Error,
)
from equipment.hsms.message import (
    CONTROL_SESSION_ID,
    HsmsState,
    Message,
    RejectReason,
    SelectStatus,
    SType,
    frame,
    parse_header,
)
from equipment.hsms.protocol import HsmsProtocol
from equipment.secs import B, Item, SecsDecodeError

log = logging.getLogger("fabd.hsms")

# handler(session, message): may return an awaitable, which runs as a task of the session
MessageHandler = Callable[["HsmsSession", Message], Awaitable[None] | None]


class HsmsSession:
    """One HSMS-SS connection and its state (NOT_CONNECTED → NOT_SELECTED → SELECTED)."""

    def __init__(self, tool_id: str, config: HsmsConfig, handler: MessageHandler | None,
                 on_state: Callable[[HsmsSession, HsmsState], None] | None = None,
                 peer: str = "") -> None:
        self.tool_id = tool_id
        self.config = config
        self.handler = handler
        self.peer = peer
        self.state = HsmsState.NOT_CONNECTED
        self.protocol: HsmsProtocol | None = None
        self._on_state = on_state
        self._system = 0
        self._t7_timer: asyncio.TimerHandle | None = None
        self._linktest_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._device_id = config.device_id
        self._m_rx = metrics.MESSAGES_RECEIVED.labels(tool_id, "hsms")
        self._m_tx = metrics.MESSAGES_SENT.labels(tool_id, "hsms")

    # --- state ------------------------------------------------------------------------------

    def _set_state(self, state: HsmsState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, state)

    @property
    def selected(self) -> bool:
        """Return True while the session is SELECTED."""
        return self.state is HsmsState.SELECTED

    @property
    def closed(self) -> asyncio.Future:
        """Return a future that resolves to the close reason when the connection ends."""
        assert self.protocol is not None and self.protocol.closed is not None
        return self.protocol.closed

    def connection_made(self, protocol: HsmsProtocol) -> None:
        """Start NOT_SELECTED and the T7 timer (called by the protocol)."""
        self.protocol = protocol
        if not self.peer and protocol.transport is not None:
            peer = protocol.transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self._set_state(HsmsState.NOT_SELECTED)
        self._start_t7()

    def connection_lost(self, reason: str) -> None:
        """Drop to NOT_CONNECTED and stop the timers (called by the protocol)."""
        for timer in (self._t7_timer, self._linktest_timer):
            if timer is not None:
                timer.cancel()
        self._t7_timer = self._linktest_timer = None
        for task in list(self._tasks):
            task.cancel()
        self._set_state(HsmsState.NOT_CONNECTED)

    def _start_t7(self) -> None:
        if self._t7_timer is not None:
            self._t7_timer.cancel()
        loop = asyncio.get_running_loop()
        self._t7_timer = loop.call_later(self.config.t7_not_selected_timeout_s, self._t7_expired)

    def _t7_expired(self) -> None:
        self._t7_timer = None
        if self.protocol is not None and not self.selected:
            # E37: T7 expiry closes the connection
            self.protocol.abort(
                f"T7 expired: not SELECTED within {self.config.t7_not_selected_timeout_s:g} s")

    def _selected(self) -> None:
        if self._t7_timer is not None:
            self._t7_timer.cancel()
            self._t7_timer = None
        self._set_state(HsmsState.SELECTED)
        self._schedule_linktest()

    def _schedule_linktest(self) -> None:
        interval = self.config.linktest_interval_s
        if interval > 0 and self.protocol is not None:
            loop = asyncio.get_running_loop()
            self._linktest_timer = loop.call_later(interval, self._linktest_due)

    def _linktest_due(self) -> None:
        self._linktest_timer = None
        if self.selected:
            self._spawn(self._periodic_linktest(), "linktest")

    async def _periodic_linktest(self) -> None:
        try:
            await self.linktest()
        except (HsmsConnectionLostError, HsmsControlTimeoutError):
            return  # T6 closed the connection; the endpoint logs the loss once
        except HsmsRejectedError as exc:
            # Reason 4 (not selected) closed the connection (on_message); any other: the
            # peer will not take Linktest.req, asking every interval changes nothing.
            if self.selected:
                log.warning("hsms %s: peer rejects Linktest.req (reason %d): no periodic "
                            "linktest on this connection", self.tool_id, exc.reason)
            return
        self._schedule_linktest()

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"hsms[{self.tool_id}].{what}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, HsmsConnectionLostError):
            log.error("hsms %s: task %s failed: %r", self.tool_id, task.get_name(), exc,
                      exc_info=exc)

    # --- control transactions ---------------------------------------------------------------

    def _next_system(self) -> int:
        self._system = (self._system + 1) & 0xFFFFFFFF or 1
        return self._system

    def _control(self, stype: int, system: int, byte3: int = 0, byte2: int = 0,
                 session_id: int = CONTROL_SESSION_ID) -> None:
        if self.protocol is None:
            raise HsmsConnectionLostError(f"{self.tool_id}: not connected")
        self.protocol.write(frame(session_id, byte2, byte3, False, stype, system))

    async def _control_transaction(self, stype: SType, what: str) -> Message:
        if self.protocol is None or self.protocol.transport is None:
            raise HsmsConnectionLostError(f"{self.tool_id}: not connected")
        system = self._next_system()
        fut = self.protocol.expect(system, self.config.t6_control_timeout_s, what)
        self._control(stype, system)
        try:
            return await fut
        except HsmsReplyTimeoutError as exc:
            # E37: T6 expiry closes the connection
            if self.protocol is not None:
                self.protocol.abort(f"T6 expired: no response to {what} within "
                                    f"{self.config.t6_control_timeout_s:g} s")
            raise HsmsControlTimeoutError(str(exc)) from None

    async def select(self) -> None:
        """Send Select.req and wait for Select.rsp (T6); SELECTED on status 0."""
        rsp = await self._control_transaction(SType.SELECT_REQ, "Select.req")
        if rsp.stype == SType.REJECT_REQ:
            raise HsmsRejectedError(f"{self.tool_id}: Select.req rejected", rsp.function)
        if rsp.function != SelectStatus.ESTABLISHED:
            known = rsp.function in frozenset(SelectStatus)
            status = SelectStatus(rsp.function).name if known else str(rsp.function)
            raise HsmsRejectedError(f"{self.tool_id}: select refused ({status})", rsp.function)
        if not self.selected:
            self._selected()

    async def deselect(self) -> None:
        """Send Deselect.req; NOT_SELECTED on status 0 (T7 runs again)."""
        rsp = await self._control_transaction(SType.DESELECT_REQ, "Deselect.req")
        if rsp.stype == SType.DESELECT_RSP and rsp.function == 0:
            if self._linktest_timer is not None:
                self._linktest_timer.cancel()
                self._linktest_timer = None
            self._set_state(HsmsState.NOT_SELECTED)
            self._start_t7()
        else:
            raise HsmsRejectedError(f"{self.tool_id}: deselect refused", rsp.function)

    async def linktest(self) -> None:
        """Send Linktest.req and wait for Linktest.rsp (T6 expiry closes the connection)."""
        await self._control_transaction(SType.LINKTEST_REQ, "Linktest.req")

    def separate(self) -> None:
        """Send Separate.req and close the connection at once (E37)."""
        if self.protocol is None or self.protocol.transport is None:
            return
        self._control(SType.SEPARATE_REQ, self._next_system())
        self.protocol.close("Separate.req sent")

    def reject(self, msg: Message, reason: RejectReason) -> None:
        """Send Reject.req for a received message (byte 2: its SType or PType, byte 3: reason)."""
        byte2 = msg.ptype if reason == RejectReason.PTYPE_NOT_SUPPORTED else msg.stype
        self._control(SType.REJECT_REQ, msg.system, byte3=int(reason), byte2=byte2,
                      session_id=msg.session_id)

    def close(self, reason: str = "closed by fabd", level: int = logging.INFO) -> None:
        """Close the TCP connection (without Separate.req); a deliberate close logs at INFO."""
        if self.protocol is not None:
            self.protocol.abort(reason, level)

    # --- data messages ----------------------------------------------------------------------

    def _check_selected(self) -> HsmsProtocol:
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            raise HsmsConnectionLostError(f"{self.tool_id}: not connected")
        if not self.selected:
            raise HsmsNotSelectedError(f"{self.tool_id}: session is {self.state.value}")
        return protocol

    async def request(self, stream: int, function: int, body: Item | None = None, *,
                      timeout_s: float | None = None) -> Message:
        """Send a primary with the W-bit and return the reply (T3; the connection stays on timeout).

        Raises HsmsNotSelectedError, HsmsConnectionLostError, HsmsReplyTimeoutError,
        HsmsStream9Error (the peer answered S9Fx), HsmsRejectedError.
        """
        protocol = self._check_selected()
        system = self._next_system()
        fut = protocol.expect(system, timeout_s or self.config.t3_reply_timeout_s,
                              f"S{stream}F{function}", self._t3_expired)
        protocol.write(frame(self._device_id, stream, function, True, 0, system, body))
        self._m_tx.inc()
        reply = await fut
        if reply.stype == SType.REJECT_REQ:
            raise HsmsRejectedError(
                f"{self.tool_id}: S{stream}F{function} rejected (reason {reply.function})",
                reply.function)
        return reply

    def request_nowait(self, stream: int, function: int, body: Item | None = None, *,
                       timeout_s: float | None = None, encoded_body: bytes = b""
                       ) -> asyncio.Future:
        """Send a W-bit primary now and return the future of its reply (no task: the fast path).

        The future fails like request() does; a Reject.req arrives as HsmsRejectedError.
        `encoded_body` sends pre-encoded SECS-II bytes instead of `body`.
        """
        protocol = self._check_selected()
        system = self._next_system()
        fut = protocol.expect(system, timeout_s or self.config.t3_reply_timeout_s,
                              f"S{stream}F{function}", self._t3_expired)
        protocol.write(frame(self._device_id, stream, function, True, 0, system, body,
                             encoded_body=encoded_body))
        self._m_tx.inc()
        return fut

    def _t3_expired(self, system: int) -> None:
        metrics.REPLY_TIMEOUTS.labels(self.tool_id, "hsms").inc()
        log.warning("hsms %s: T3 expired for transaction %d (%g s); connection stays",
                    self.tool_id, system, self.config.t3_reply_timeout_s)

    def send_nowait(self, stream: int, function: int, body: Item | None = None, *,
                    reply_to: Message | None = None) -> None:
        """Send a data message without the W-bit now; with `reply_to`, as its reply."""
        protocol = self._check_selected() if reply_to is None else self.protocol
        if protocol is None or protocol.transport is None:
            raise HsmsConnectionLostError(f"{self.tool_id}: connection gone before the reply")
        system = reply_to.system if reply_to is not None else self._next_system()
        protocol.write(frame(self._device_id, stream, function, False, 0, system, body))
        self._m_tx.inc()

    async def send(self, stream: int, function: int, body: Item | None = None, *,
                   reply_to: Message | None = None) -> None:
        """Send a data message (a reply when `reply_to` is given), waiting if the socket is full."""
        self.send_nowait(stream, function, body, reply_to=reply_to)
        if self.protocol is not None:
            await self.protocol.drain()

    def reply_nowait(self, msg: Message, body: Item | None = None) -> None:
        """Answer a primary message with function + 1 and its system bytes."""
        self.send_nowait(msg.stream, msg.function + 1, body, reply_to=msg)

    async def reply(self, msg: Message, body: Item | None = None) -> None:
        """Answer a primary message with function + 1 and its system bytes."""
        await self.send(msg.stream, msg.function + 1, body, reply_to=msg)

    def send_s9(self, function: int, offending_header: bytes) -> None:
        """Send S9Fx (1 device id, 3 stream, 5 function, 7 data, 9 T3, 11 too long) with the MHEAD."""
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            return
        protocol.write(frame(self._device_id, 9, function, False, 0, self._next_system(),
                             B(offending_header)))
        self._m_tx.inc()

    # --- receive path (called by the protocol) ----------------------------------------------

    def received(self, msg: Message) -> None:
        """Count a reply that completed a transaction; a positive Select.rsp selects at once.

        Data the peer sends right behind its Select.rsp may sit in the same TCP segment:
        the state must be SELECTED before the protocol hands that data over.
        """
        self._m_rx.inc()
        if msg.stype == SType.SELECT_RSP and msg.function == 0 and not self.selected:
            self._selected()

    def too_long(self, header: bytes, length: int) -> None:
        """Answer a message over max_message_bytes (skipped, never buffered) with S9F11."""
        hdr = parse_header(header)
        if hdr.stype != 0:
            self._m_rx.inc()
            metrics.MALFORMED.labels(self.tool_id, "hsms").inc()
            log.warning("hsms %s: dropping a %d-byte control message (SType %d)", self.tool_id,
                        length, hdr.stype)
            return
        self.malformed(header, SecsDecodeError(
            f"{length} bytes, over max_message_bytes: data too long", 0), function=11)

    def malformed(self, header: bytes, exc: SecsDecodeError, function: int = 7) -> None:
        """Answer an undecodable body with S9F7 (a body too long: S9F11); the session stays up.

        The header is checked first, as for any data message: before SELECTED a Reject.req
        (E37), for another device id S9F1 (E5), whatever the body holds.
        """
        self._m_rx.inc()
        metrics.MALFORMED.labels(self.tool_id, "hsms").inc()
        hdr = parse_header(header)
        log.warning("hsms %s: malformed body in %s (system %d): %s", self.tool_id, hdr.sf,
                    hdr.system, exc.reason)
        if self.protocol is not None:
            entry = self.protocol.pending.pop(hdr.system, None) if not hdr.function & 1 else None
            if entry is not None:
                if entry[1] is not None:
                    entry[1].cancel()
                if not entry[0].done():
                    entry[0].set_exception(exc)
        if self.protocol is None or self.protocol.transport is None:
            return
        if not self.selected:
            self.reject(hdr, RejectReason.ENTITY_NOT_SELECTED)
        elif hdr.session_id != self._device_id:
            self.send_s9(1, header)
        else:
            self.send_s9(function, header)

    def unexpected_reply(self, msg: Message) -> None:
        """Log and drop a reply whose system bytes match no open transaction."""
        self._m_rx.inc()
        log.warning("hsms %s: dropping %r: no open transaction with system bytes %d",
                    self.tool_id, msg, msg.system)
        if msg.stype != SType.DATA and self.protocol is not None and self.protocol.transport:
            self.reject(msg, RejectReason.TRANSACTION_NOT_OPEN)

    def on_message(self, msg: Message) -> None:
        """Handle a primary data message or a control request."""
        self._m_rx.inc()
        stype = msg.stype
        if stype == 0:
            if msg.ptype != 0:
                self.reject(msg, RejectReason.PTYPE_NOT_SUPPORTED)
            elif not self.selected:
                self.reject(msg, RejectReason.ENTITY_NOT_SELECTED)
            elif msg.session_id != self._device_id:
                log.warning("hsms %s: %r carries device id %d, expected %d; answering S9F1",
                            self.tool_id, msg, msg.session_id, self._device_id)
                self.send_s9(1, msg.header)
            elif msg.stream == 9:
                self._stream9(msg)
            elif self.handler is None:
                if msg.wbit:
                    self.send_s9(3, msg.header)
            else:
                self._dispatch(msg)
        elif stype == SType.SELECT_REQ:
            if self.selected:
                self._control(SType.SELECT_RSP, msg.system, SelectStatus.ALREADY_ACTIVE)
            else:
                self._control(SType.SELECT_RSP, msg.system, SelectStatus.ESTABLISHED)
                self._selected()
        elif stype == SType.LINKTEST_REQ:
            self._control(SType.LINKTEST_RSP, msg.system)
        elif stype == SType.DESELECT_REQ:
            if self.selected:
                self._control(SType.DESELECT_RSP, msg.system, 0)
                if self._linktest_timer is not None:
                    self._linktest_timer.cancel()
                    self._linktest_timer = None
                self._set_state(HsmsState.NOT_SELECTED)
                self._start_t7()
            else:
                self._control(SType.DESELECT_RSP, msg.system, 1)  # not established
        elif stype == SType.SEPARATE_REQ:
            if self.protocol is not None:
                self.protocol.abort("Separate.req received")
        elif stype == SType.REJECT_REQ:
            entry = self.protocol.pending.pop(msg.system, None) if self.protocol else None
            log.warning("hsms %s: peer rejected our message (system %d, reason %d)",
                        self.tool_id, msg.system, msg.function)
            if entry is not None:
                if entry[1] is not None:
                    entry[1].cancel()
                if not entry[0].done():
                    entry[0].set_exception(HsmsRejectedError(
                        f"{self.tool_id}: message rejected by peer (reason {msg.function})",
                        msg.function))
            if (msg.function == RejectReason.ENTITY_NOT_SELECTED and self.selected
                    and self.protocol is not None):
                # The peer no longer counts us SELECTED (it reset its HSMS state, the TCP
                # connection stayed): nothing sent here will be taken and, SELECTED on our
                # side, neither T7 nor linktest would end it. Start over: the supervisor
                # connects and selects again (and the GEM start-up runs).
                self.protocol.abort("peer rejected a message as not selected (reason 4)")
        else:
            self.reject(msg, RejectReason.STYPE_NOT_SUPPORTED)

    def _stream9(self, msg: Message) -> None:
        body = msg.body
        offending = parse_header(body) if isinstance(body, B) and len(body) == 10 else None
        log.warning("hsms %s: peer sent S9F%d about %r", self.tool_id, msg.function, offending)
        # Only a primary we sent carries our system bytes. E5: the header in S9F9 is the
        # sender's own transaction that timed out, and an S9Fx about one of our replies
        # repeats the peer's system bytes: the same number can be open on our side.
        if (offending is not None and msg.function != 9 and offending.function & 1
                and self.protocol is not None):
            entry = self.protocol.pending.pop(offending.system, None)
            if entry is not None:
                if entry[1] is not None:
                    entry[1].cancel()
                if not entry[0].done():
                    entry[0].set_exception(HsmsStream9Error(
                        f"{self.tool_id}: peer answered {offending.sf} with S9F{msg.function}",
                        msg.function))
                return
        if self.handler is not None:
            self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        try:
            result = self.handler(self, msg)
        except HsmsConnectionLostError:
            return
        except Exception:
            # a bug in the GEM layer must not take the connection down with it
            log.exception("hsms %s: handler failed on %r", self.tool_id, msg)
            return
        if result is not None and inspect.isawaitable(result):
            self._spawn(result, msg.sf)
