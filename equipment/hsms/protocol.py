"""HSMS framing on an asyncio Protocol: length-prefixed frames, reply futures by system bytes, T8.

The protocol knows bytes and transactions, nothing about select or GEM: it
cuts the stream into frames (refusing a length field over the configured cap
before allocating anything), decodes each header and SECS-II body, resolves
the future waiting on a reply's system bytes, hands every other message to
its session, and fails every pending future when the connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from equipment.hsms.errors import HsmsConnectionLostError, HsmsReplyTimeoutError
from equipment.hsms.message import HEADER, Message
from equipment.secs import SecsDecodeError, decode_from

if TYPE_CHECKING:
    from equipment.hsms.session import HsmsSession

log = logging.getLogger("fabd.hsms")

_LENGTH = struct.Struct(">I")
_unpack_length = _LENGTH.unpack_from
_unpack_header = HEADER.unpack_from


class HsmsProtocol(asyncio.Protocol):
    """Frame bytes into Messages for one TCP connection and correlate replies with requests."""

    def __init__(self, session: HsmsSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle | None]] = {}
        self.closed: asyncio.Future | None = None  # set to the reason when the connection ends
        self._buf = bytearray()
        self._max = session.config.max_message_bytes
        self._t8_s = session.config.t8_intercharacter_timeout_s
        self._t8_timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writable: asyncio.Future | None = None
        self._close_reason = ""
        self._skip = 0                 # bytes left of a message over the cap, being skipped
        self._skip_header = b""        # its header, answered once the message has passed
        self._skip_length = 0

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.session.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason or (f"connection lost: {exc}" if exc else "closed by peer")
        if self._t8_timer is not None:
            self._t8_timer.cancel()
        pending, self.pending = self.pending, {}
        for fut, timer in pending.values():
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(HsmsConnectionLostError(
                    f"{self.session.tool_id}: {reason} before the reply arrived"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(reason)
        self.session.connection_lost(reason)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            data = buf
        n = len(data)
        pos = 0
        session = self.session
        while True:
            if self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                if self._skip:
                    break
                session.too_long(self._skip_header, self._skip_length)
                if self.transport is None:
                    return
                continue
            if n - pos < 4:
                break
            (length,) = _unpack_length(data, pos)
            if length < 10:
                self.abort(f"length field {length} below the 10-byte header: the framing is "
                           "lost", logging.WARNING)
                return
            if length > self._max:
                if n - pos < 14:
                    break       # its header first
                self._skip_header = bytes(data[pos + 4:pos + 14])
                self._skip_length = length
                self._skip = length - 10
                log.warning("hsms %s: length field %d over max_message_bytes (%d): skipping "
                            "the message as it arrives", session.tool_id, length, self._max)
                pos += 14
                continue
            end = pos + 4 + length
            if end > n:
                break
            self._frame(session, data, pos + 4, end)
            if self.transport is None:
                return
            pos = end
        if pos == n:
            if buf:
                self._buf = bytearray()
            if self._skip:      # T8 holds for the pieces of a skipped message too
                self._last_rx = self._loop.time()
                if self._t8_timer is None:
                    self._t8_timer = self._loop.call_at(self._last_rx + self._t8_s,
                                                        self._t8_check)
            return
        if buf:
            del buf[:pos]
        else:
            self._buf = bytearray(data[pos:])
        # E37 T8: a message arrives in pieces; the gap between pieces must stay under T8
        self._last_rx = self._loop.time()
        if self._t8_timer is None:
            self._t8_timer = self._loop.call_at(self._last_rx + self._t8_s, self._t8_check)

    def _frame(self, session: HsmsSession, data: bytes | bytearray, start: int, end: int) -> None:
        session_id, b2, function, ptype, stype, system = _unpack_header(data, start)
        body = None
        if stype == 0 and ptype == 0 and end > start + 10:
            try:
                body, stop = decode_from(data, start + 10, end)
                if stop != end:
                    raise SecsDecodeError(f"{end - stop} bytes after the item", stop - start - 10)
            except SecsDecodeError as exc:
                # Hand on a fresh error: the raised one's traceback holds the decoder's view
                # of the receive buffer, and a request failed with it would keep that view
                # alive, so the buffer could not be trimmed after this frame (BufferError).
                session.malformed(bytes(data[start:start + 10]),
                                  SecsDecodeError(exc.reason, exc.offset))
                return
        msg = Message(session_id, b2 & 0x7F, function, b2 > 0x7F, ptype, stype, system, body)
        if (stype == 0 and ptype == 0 and not function & 1) or stype in (2, 4, 6):
            # a reply (secondary data message or control response) closes its transaction;
            # another PType is no SECS-II reply: the session rejects it (E37 reason 2)
            entry = self.pending.pop(system, None)
            if entry is not None:
                fut, timer = entry
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    fut.set_result(msg)
                session.received(msg)
                return
            if function != 0 or stype != 0:  # SxF0 (abort) is a valid unsolicited secondary
                session.unexpected_reply(msg)
                return
        session.on_message(msg)

    def _t8_check(self) -> None:
        self._t8_timer = None
        if not (self._buf or self._skip) or self.transport is None:
            return
        now = self._loop.time()
        if now - self._last_rx >= self._t8_s:
            what = (f"{self._skip} bytes of a {self._skip_length}-byte message still to come"
                    if self._skip else f"{len(self._buf)} bytes of a partial message")
            self.abort(f"T8 expired: {what} and nothing for {self._t8_s:g} s")
        else:
            self._t8_timer = self._loop.call_at(self._last_rx + self._t8_s, self._t8_check)

    # --- used by the session -----------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """Send one frame now (raises HsmsConnectionLostError if the connection has gone)."""
        if self.transport is None or self.transport.is_closing():
            raise HsmsConnectionLostError(f"{self.session.tool_id}: not connected")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._writable is not None and not self._writable.done():
            await self._writable

    def expect(self, system: int, timeout_s: float, what: str,
               on_timeout: Callable[[int], None] | None = None) -> asyncio.Future:
        """Return a future for the reply carrying `system`; it fails after `timeout_s`."""
        fut = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, self._expire, system, timeout_s, what, on_timeout)
        self.pending[system] = (fut, timer)
        return fut

    def _expire(self, system: int, timeout_s: float, what: str,
                on_timeout: Callable[[int], None] | None) -> None:
        entry = self.pending.pop(system, None)
        if entry is None:
            return
        fut = entry[0]
        if fut.cancelled():
            return  # nobody waits for this reply any more: not a T3 worth reporting
        if not fut.done():
            fut.set_exception(HsmsReplyTimeoutError(
                f"{self.session.tool_id}: no reply to {what} (system {system}) within {timeout_s:g} s"))
        if on_timeout is not None:
            on_timeout(system)

    def abort(self, reason: str, level: int = logging.DEBUG) -> None:
        """Close the connection at once (the reason reaches `closed`, which the endpoint logs)."""
        if self.transport is None:
            return
        if not self._close_reason:
            self._close_reason = reason
            log.log(level, "hsms %s: closing connection: %s", self.session.tool_id, reason)
        transport, self.transport = self.transport, None
        self._buf = bytearray()
        transport.abort()

    def close(self, reason: str) -> None:
        """Close after flushing what was written (Separate.req, final replies)."""
        if self.transport is None:
            return
        if not self._close_reason:
            self._close_reason = reason
            log.info("hsms %s: closing connection: %s", self.session.tool_id, reason)
        transport, self.transport = self.transport, None
        transport.close()
