"""HSMS messages (SEMI E37 §8): 4-byte length, 10-byte header, SECS-II body."""

from __future__ import annotations

import enum
import struct

from equipment.secs import U1, U2, U4, A, B, Item, encode, encode_into, to_sml

HEADER = struct.Struct(">HBBBBI")  # session id, W-bit|stream, function, PType, SType, system bytes
FRAME = struct.Struct(">IHBBBBI")  # length prefix + header
CONTROL_SESSION_ID = 0xFFFF  # E37.1: HSMS-SS control messages
_SMALL_TYPES = frozenset({B, U1, U2, U4, A})
_small_bodies: dict[tuple[type, Item], bytes] = {}


class HsmsState(enum.Enum):
    """Connection states named as in E37 §7."""

    NOT_CONNECTED = "NOT_CONNECTED"
    NOT_SELECTED = "NOT_SELECTED"
    SELECTED = "SELECTED"


class SType(enum.IntEnum):
    """Session types (E37 §8.2.6)."""

    DATA = 0
    SELECT_REQ = 1
    SELECT_RSP = 2
    DESELECT_REQ = 3
    DESELECT_RSP = 4
    LINKTEST_REQ = 5
    LINKTEST_RSP = 6
    REJECT_REQ = 7
    SEPARATE_REQ = 9


class SelectStatus(enum.IntEnum):
    """Select.rsp status (E37 §8.3.3)."""

    ESTABLISHED = 0
    ALREADY_ACTIVE = 1
    NOT_READY = 2
    EXHAUSTED = 3


class RejectReason(enum.IntEnum):
    """Reject.req reason code (E37 §8.3.21), carried in header byte 3."""

    STYPE_NOT_SUPPORTED = 1
    PTYPE_NOT_SUPPORTED = 2
    TRANSACTION_NOT_OPEN = 3
    ENTITY_NOT_SELECTED = 4


_STYPES = frozenset(SType)


class Message:
    """One received or sent HSMS message; `body` is the decoded SECS-II item (None if empty)."""

    __slots__ = ("body", "function", "ptype", "session_id", "stream", "stype", "system", "wbit")

    def __init__(self, session_id: int, stream: int, function: int, wbit: bool, ptype: int,
                 stype: int, system: int, body: Item | None = None) -> None:
        self.session_id = session_id
        self.stream = stream
        self.function = function
        self.wbit = wbit
        self.ptype = ptype
        self.stype = stype
        self.system = system
        self.body = body

    @property
    def header(self) -> bytes:
        """Return the 10-byte header (the MHEAD an S9Fx message carries)."""
        return header_bytes(self.session_id, self.stream, self.function, self.wbit, self.ptype,
                            self.stype, self.system)

    @property
    def sf(self) -> str:
        """Return "S6F11" style name."""
        return f"S{self.stream}F{self.function}"

    def __repr__(self) -> str:
        if self.stype != SType.DATA:
            name = SType(self.stype).name if self.stype in _STYPES else str(self.stype)
            return f"<{name} system={self.system}>"
        w = " W" if self.wbit else ""
        return f"<S{self.stream}F{self.function}{w} system={self.system} device={self.session_id}>"

    def to_sml(self) -> str:
        """Return the message as SML text (for logs)."""
        w = " W" if self.wbit else ""
        body = to_sml(self.body)
        return f"S{self.stream}F{self.function}{w}\n{body}." if body else f"S{self.stream}F{self.function}{w}."


def header_bytes(session_id: int, stream: int, function: int, wbit: bool, ptype: int, stype: int,
                 system: int) -> bytes:
    """Pack a 10-byte HSMS header."""
    return HEADER.pack(session_id, (0x80 if wbit else 0) | stream, function, ptype, stype, system)


def frame(session_id: int, stream: int, function: int, wbit: bool, stype: int, system: int,
          body: Item | None = None, ptype: int = 0, *, encoded_body: bytes = b"") -> bytearray:
    """Return the complete wire frame (length prefix, header, encoded body).

    `encoded_body` sends bytes already encoded (a simulator's pre-built template) instead.
    """
    out = bytearray(14)
    if encoded_body:
        out += encoded_body
    elif body is not None:
        cls = type(body)
        if cls in _SMALL_TYPES and len(body) <= 8:
            # acks (S6F12, S5F2...) are a handful of tiny bodies: encode each once
            data = _small_bodies.get((cls, body))
            if data is None:
                if len(_small_bodies) >= 4096:
                    _small_bodies.clear()
                data = _small_bodies[(cls, body)] = encode(body)
            out += data
        else:
            encode_into(body, out)
    FRAME.pack_into(out, 0, len(out) - 4, session_id, (0x80 if wbit else 0) | stream, function,
                    ptype, stype, system)
    return out


def parse_header(header: bytes | bytearray | memoryview) -> Message:
    """Decode a 10-byte header (an S9Fx MHEAD) into a body-less Message."""
    session_id, b2, function, ptype, stype, system = HEADER.unpack_from(header, 0)
    return Message(session_id, b2 & 0x7F, function, bool(b2 & 0x80), ptype, stype, system)
