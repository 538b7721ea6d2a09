"""Fuzz the HSMS reader: random and mutated byte streams, in random pieces, never crash it."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equipment.hsms import HsmsConfig, HsmsProtocol, HsmsSession, Message, SType, frame
from equipment.secs import U4, A, B, L


class BytesTransport(asyncio.Transport):
    """A hand-written in-memory transport: records writes, remembers being closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


CONFIG = HsmsConfig(e37_ranges=False, max_message_bytes=4096, t7_not_selected_timeout_s=60.0,
                    linktest_interval_s=0.0)
VALID = [
    bytes(frame(0xFFFF, 0, 0, False, SType.SELECT_REQ, 1)),
    bytes(frame(0, 6, 11, True, SType.DATA, 2, L(U4(1), U4(3001), L(L(U4(10), L(A("LOT"), B(b"\x01"))))))),
    bytes(frame(0xFFFF, 0, 0, False, SType.LINKTEST_REQ, 3)),
    bytes(frame(0, 1, 4, False, SType.DATA, 99, L())),
    bytes(frame(0, 1, 13, True, SType.DATA, 4, L())),
]


def _handler(session: HsmsSession, msg: Message) -> None:
    if msg.wbit:
        session.reply_nowait(msg, B(b"\x00"))


async def _feed(chunks: list[bytes]) -> None:
    session = HsmsSession("FUZZ", CONFIG, _handler)
    protocol = HsmsProtocol(session)
    transport = BytesTransport()
    protocol.connection_made(transport)
    for chunk in chunks:
        if transport.closed:
            break
        protocol.data_received(chunk)  # only typed handling inside: nothing may escape
    protocol.connection_lost(None)


def _run(chunks: list[bytes]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_feed(chunks), 5))
    finally:
        loop.close()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_random_byte_streams_never_escape_the_reader(chunks: list[bytes]) -> None:
    _run(chunks)


@st.composite
def mutated_streams(draw: st.DrawFn) -> list[bytes]:
    stream = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=6))))
    for _ in range(draw(st.integers(0, 6))):
        if not stream:
            break
        i = draw(st.integers(0, len(stream) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            stream[i] = draw(st.integers(0, 255))
        elif op == "insert":
            stream[i:i] = draw(st.binary(min_size=1, max_size=6))
        else:
            del stream[i:i + draw(st.integers(1, 6))]
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    pieces, last = [], 0
    for cut in [*cuts, len(stream)]:
        pieces.append(bytes(stream[last:cut]))
        last = cut
    return pieces


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_streams())
def test_mutated_frames_in_random_pieces_never_escape_the_reader(chunks: list[bytes]) -> None:
    _run(chunks)


def test_valid_stream_in_one_byte_pieces_is_answered_in_full() -> None:
    async def go() -> bytearray:
        session = HsmsSession("FUZZ", CONFIG, _handler)
        protocol = HsmsProtocol(session)
        transport = BytesTransport()
        protocol.connection_made(transport)
        for byte in b"".join(VALID):
            protocol.data_received(bytes([byte]))
        protocol.connection_lost(None)
        return transport.written

    loop = asyncio.new_event_loop()
    try:
        written = loop.run_until_complete(go())
    finally:
        loop.close()
    # Select.rsp, S6F12, Linktest.rsp, S1F14 (the stray S1F4 reply is dropped)
    assert written.count(b"\xff\xff\x00\x00\x00\x02") == 1
    assert b"\x00\x00\x06\x0c\x00\x00\x00\x00\x00\x02" in written
    assert b"\x00\x00\x01\x0e\x00\x00\x00\x00\x00\x04" in written
