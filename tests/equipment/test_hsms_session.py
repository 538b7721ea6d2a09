"""HSMS-SS over real loopback sockets: our host against our passive endpoint and raw peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from equipment import metrics
from equipment.hsms import (
    HsmsActive,
    HsmsConfig,
    HsmsConnectionLostError,
    HsmsControlTimeoutError,
    HsmsNotSelectedError,
    HsmsPassive,
    HsmsReplyTimeoutError,
    HsmsSession,
    HsmsState,
    HsmsStream9Error,
    Message,
    RejectReason,
    SType,
    frame,
    parse_header,
)
from equipment.secs import U4, A, B, L, SecsDecodeError, decode, encode
from tests.support import eventually

FAST = dict(e37_ranges=False, t3_reply_timeout_s=10.0, t5_connect_separation_s=0.05,
            t6_control_timeout_s=5.0, t7_not_selected_timeout_s=5.0,
            t8_intercharacter_timeout_s=1.0, linktest_interval_s=0.0,
            reconnect_backoff_max_s=0.2)


def host_config(port: int, **over: object) -> HsmsConfig:
    return HsmsConfig(**{**FAST, "port": port, **over})


def echo_handler(session: HsmsSession, msg: Message) -> None:
    """Answer every W-bit primary with L(A "echo", <its body>)."""
    if msg.wbit:
        session.reply_nowait(msg, L(A("echo"), msg.body if msg.body is not None else L()))


@contextlib.asynccontextmanager
async def running(*endpoints: HsmsActive | HsmsPassive) -> AsyncIterator[None]:
    """Run endpoints as tasks and stop them afterwards."""
    tasks = []
    for ep in endpoints:
        if isinstance(ep, HsmsPassive):
            await ep.start()
    for ep in endpoints:
        tasks.append(asyncio.create_task(ep.run(), name=f"test[{ep.tool_id}]"))
    try:
        yield
    finally:
        for ep in endpoints:
            ep.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


async def pair(handler: Callable = echo_handler, **over: object) -> tuple[HsmsPassive, HsmsActive]:
    eq = HsmsPassive("EQ-1", HsmsConfig(**{**FAST, "mode": "passive", "port": 0, **over}), handler)
    await eq.start()
    host = HsmsActive("EQ-1", host_config(eq.port, **over))
    return eq, host


# --- raw peers ----------------------------------------------------------------------------


class RawPeer:
    """A hand-driven HSMS peer on a real socket: write frames, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, timeout_s: float = 5.0) -> Message:
        hdr = await asyncio.wait_for(self.reader.readexactly(4), timeout_s)
        (length,) = struct.unpack(">I", hdr)
        data = await asyncio.wait_for(self.reader.readexactly(length), timeout_s)
        msg = parse_header(data[:10])
        msg.body = decode(data[10:])
        return msg

    async def read_data(self, timeout_s: float = 5.0) -> Message:
        """Read frames, answering linktests, until a data message arrives."""
        while True:
            msg = await self.read(timeout_s)
            if msg.stype == SType.DATA:
                return msg

    def write(self, data: bytes | bytearray) -> None:
        self.writer.write(data)

    async def eof(self, timeout_s: float = 5.0) -> bool:
        data = await asyncio.wait_for(self.reader.read(), timeout_s)
        return data == b""

    async def answer_select(self) -> None:
        req = await self.read()
        assert req.stype == SType.SELECT_REQ and req.session_id == 0xFFFF
        self.write(frame(0xFFFF, 0, 0, False, SType.SELECT_RSP, req.system))


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[tuple[int, asyncio.Queue]]:
    """Listen on a free port; each accepted connection is put on the queue as a RawPeer."""
    peers: asyncio.Queue[RawPeer] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(RawPeer(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], peers
    finally:
        server.close()


async def raw_client(port: int) -> RawPeer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return RawPeer(reader, writer)


@contextlib.asynccontextmanager
async def selected_host(tool_id: str, handler=None, **config: object  # type: ignore[no-untyped-def]
                        ) -> AsyncIterator[tuple[HsmsActive, RawPeer, asyncio.Queue]]:
    """A host connected to a raw peer that answered its Select.req: (host, peer, later peers)."""
    async with raw_server() as (port, peers):
        host = HsmsActive(tool_id, host_config(port, **config), handler)
        async with running(host):
            peer = await asyncio.wait_for(peers.get(), 5)
            await peer.answer_select()
            await host.wait_state(HsmsState.SELECTED, 5)
            yield host, peer, peers


def with_bad_u4_length(msg: bytes) -> bytearray:
    """The message with its body's first item, a U4 inside a list, claiming 5 bytes (4 follow)."""
    bad = bytearray(msg)
    bad[14 + 2] = 0xB1
    bad[14 + 3] = 5
    return bad


# --- tests --------------------------------------------------------------------------------


async def test_host_selects_requests_and_gets_the_reply() -> None:
    eq, host = await pair()
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        await eq.wait_state(HsmsState.SELECTED, 5)
        reply = await host.request(1, 3, L(U4(1001, 1002)))
        assert (reply.stream, reply.function, reply.wbit) == (1, 4, False)
        assert reply.body == L(A("echo"), L(U4(1001, 1002)))
        assert metrics.CONNECTED.labels("EQ-1", "hsms")._value.get() == 1


async def test_linktest_deselect_reselect_and_separate() -> None:
    eq, host = await pair()
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        session = host.session
        await session.linktest()
        await session.deselect()
        assert session.state is HsmsState.NOT_SELECTED
        await eventually(lambda: eq.state is HsmsState.NOT_SELECTED, what="equipment deselected")
        with pytest.raises(HsmsNotSelectedError):
            await host.request(1, 1)
        await session.select()
        assert (await host.request(1, 1)).function == 2
        session.separate()
        # Separate closes the TCP connection on both ends; the supervisor comes back by itself
        await eventually(lambda: host.session is not session and host.state is HsmsState.SELECTED,
                         what="host reconnected after separate")


async def test_periodic_linktest_keeps_a_quiet_connection_checked() -> None:
    eq, host = await pair(linktest_interval_s=0.05)
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        before = metrics.MESSAGES_RECEIVED.labels("EQ-1", "hsms")._value.get()
        # each Linktest.req the host sends is answered; the equipment counts them as received
        await eventually(lambda: metrics.MESSAGES_RECEIVED.labels("EQ-1", "hsms")._value.get()
                         >= before + 6, what="linktests exchanged")
        assert host.state is HsmsState.SELECTED


async def test_data_message_before_select_is_rejected_entity_not_selected() -> None:
    eq = HsmsPassive("EQ-R", HsmsConfig(**{**FAST, "mode": "passive", "port": 0}), echo_handler)
    async with running(eq):
        peer = await raw_client(eq.port)
        peer.write(frame(0, 1, 1, True, SType.DATA, 77))
        rej = await peer.read()
        assert rej.stype == SType.REJECT_REQ and rej.system == 77
        assert rej.function == RejectReason.ENTITY_NOT_SELECTED
        peer.write(frame(0xFFFF, 0, 0, False, 12, 78))  # an SType nobody defined
        rej = await peer.read()
        assert rej.stype == SType.REJECT_REQ and rej.function == RejectReason.STYPE_NOT_SUPPORTED


async def test_t3_timeout_fails_the_transaction_and_the_connection_stays() -> None:
    def slow(session: HsmsSession, msg: Message) -> None:
        if msg.function != 3:  # never answers S1F3
            echo_handler(session, msg)

    eq, host = await pair(slow, t3_reply_timeout_s=0.2)
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        session = host.session
        t3_before = metrics.REPLY_TIMEOUTS.labels("EQ-1", "hsms")._value.get()
        with pytest.raises(HsmsReplyTimeoutError):
            await host.request(1, 3, L())
        assert metrics.REPLY_TIMEOUTS.labels("EQ-1", "hsms")._value.get() == t3_before + 1
        assert host.session is session and host.state is HsmsState.SELECTED
        assert (await host.request(1, 1, timeout_s=10.0)).function == 2


async def test_t6_no_select_response_closes_and_the_supervisor_keeps_trying() -> None:
    async with raw_server() as (port, peers):
        host = HsmsActive("EQ-T6", host_config(port, t6_control_timeout_s=1.0))
        async with running(host):
            first = await asyncio.wait_for(peers.get(), 5)
            assert (await first.read()).stype == SType.SELECT_REQ  # and never answer it
            assert await first.eof()  # E37: T6 expiry closes the connection
            second = await asyncio.wait_for(peers.get(), 5)  # the supervisor reconnects
            await second.answer_select()
            await host.wait_state(HsmsState.SELECTED, 5)
    with pytest.raises(HsmsControlTimeoutError):
        async with raw_server() as (port, peers):
            host = HsmsActive("EQ-T6b", host_config(port, t6_control_timeout_s=0.2))
            await host.connect_once()


async def test_t7_not_selected_closes_the_connection() -> None:
    eq = HsmsPassive("EQ-T7", HsmsConfig(**{**FAST, "mode": "passive", "port": 0,
                                             "t7_not_selected_timeout_s": 0.2}), echo_handler)
    async with running(eq):
        peer = await raw_client(eq.port)
        assert await peer.eof()


async def test_t8_partial_message_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    eq = HsmsPassive("EQ-T8", HsmsConfig(**{**FAST, "mode": "passive", "port": 0,
                                             "t8_intercharacter_timeout_s": 0.2}), echo_handler)
    async with running(eq):
        peer = await raw_client(eq.port)
        peer.write(frame(0xFFFF, 0, 0, False, SType.SELECT_REQ, 1))
        await peer.read()
        peer.write(bytes(frame(0, 1, 1, True, SType.DATA, 2))[:9])  # and the rest never comes
        assert await peer.eof()
    assert any("T8 expired" in r.getMessage() and "EQ-T8" in r.getMessage()
               for r in caplog.records)


async def test_peer_dropping_mid_transaction_fails_the_request_and_host_reconnects() -> None:
    def dropper(session: HsmsSession, msg: Message) -> None:
        if msg.function == 41:
            session.close("equipment power-cycled mid-transaction")
        else:
            echo_handler(session, msg)

    eq, host = await pair(dropper)
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        reconnects = metrics.RECONNECTS.labels("EQ-1", "hsms")._value.get()
        with pytest.raises(HsmsConnectionLostError):
            await host.request(2, 41, L(A("START"), L()))
        await eventually(lambda: metrics.RECONNECTS.labels("EQ-1", "hsms")._value.get()
                         == reconnects + 1 and host.state is HsmsState.SELECTED,
                         what="host reconnected")
        assert (await host.request(1, 1)).function == 2


async def test_hooks_run_on_every_select_and_every_loss() -> None:
    selected: list[HsmsSession] = []
    lost: list[str] = []

    async def on_selected(session: HsmsSession) -> None:
        reply = await session.request(1, 13, L())  # what the GEM layer does: establish comms
        selected.append(reply)

    eq, host = await pair()
    host.on_selected = on_selected
    host.on_lost = lost.append
    async with running(eq, host):
        await eventually(lambda: len(selected) == 1, what="first on_selected")
        eq.session.close("tool rebooted")
        await eventually(lambda: len(selected) == 2 and len(lost) == 1, what="hooks after loss")
    assert "closed by peer" in lost[0]


async def test_reply_to_unknown_system_bytes_is_logged_and_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    async with selected_host("EQ-U", echo_handler) as (_host, peer, _peers):
        peer.write(frame(0, 1, 4, False, SType.DATA, 0xDEAD, L()))
        # the host is still there and answers the next primary
        peer.write(frame(0, 1, 1, True, SType.DATA, 5))
        reply = await peer.read_data()
        assert (reply.function, reply.system) == (2, 5)
    assert any("no open transaction" in r.getMessage() and "EQ-U" in r.getMessage()
               for r in caplog.records)


async def test_malformed_body_is_answered_s9f7_and_the_session_survives() -> None:
    async with selected_host("EQ-M", echo_handler) as (_host, peer, _peers):
        bad = with_bad_u4_length(frame(0, 6, 11, True, SType.DATA, 9, L(U4(1), U4(3001))))
        malformed = metrics.MALFORMED.labels("EQ-M", "hsms")._value.get()
        peer.write(bad)
        s9 = await peer.read_data()
        assert (s9.stream, s9.function) == (9, 7)
        assert parse_header(bytes(s9.body)).system == 9
        assert metrics.MALFORMED.labels("EQ-M", "hsms")._value.get() == malformed + 1
        peer.write(frame(0, 1, 1, True, SType.DATA, 10))
        assert (await peer.read_data()).system == 10


async def test_wrong_device_id_is_answered_s9f1() -> None:
    async with selected_host("EQ-D", echo_handler, device_id=3) as (_host, peer, _peers):
        peer.write(frame(7, 1, 1, True, SType.DATA, 21))
        s9 = await peer.read_data()
        assert (s9.stream, s9.function, s9.session_id) == (9, 1, 3)
        assert parse_header(bytes(s9.body)).session_id == 7
        peer.write(frame(3, 1, 1, True, SType.DATA, 22))
        assert (await peer.read_data()).function == 2


async def test_peer_answering_s9_fails_our_request_at_once() -> None:
    async with selected_host("EQ-9") as (host, peer, _peers):
        request = asyncio.create_task(host.request(99, 1))
        primary = await peer.read_data()
        peer.write(frame(0, 9, 3, False, SType.DATA, 1000, B(primary.header)))
        with pytest.raises(HsmsStream9Error) as err:
            await request
        assert err.value.s9_function == 3


async def test_a_message_over_the_cap_is_skipped_and_answered_s9f11_and_the_session_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    # A trace report bigger than max_message_bytes used to close the connection; a tool that
    # spooled it sent it again at every reconnect, and the link never came back for good.
    async with selected_host("EQ-TL", echo_handler, max_message_bytes=4096) as (host, peer,
                                                                                 _peers):
        big = frame(0, 6, 1, True, SType.DATA, 51, L(*[A("x" * 100) for _ in range(60)]))
        assert len(big) > 4096 + 4
        for at in range(0, len(big), 1000):          # in pieces, as TCP delivers it
            peer.write(big[at:at + 1000])
            await asyncio.sleep(0.01)
        s9 = await peer.read_data()
        assert (s9.stream, s9.function) == (9, 11)
        assert parse_header(bytes(s9.body)).system == 51
        peer.write(frame(0, 1, 1, True, SType.DATA, 52))   # the session is still up
        echo = await peer.read_data()
        assert echo.system == 52 and (echo.stream, echo.function) == (1, 2)
        assert host.state == HsmsState.SELECTED
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("EQ-TL" in line and "over max_message_bytes" in line for line in lines)


async def test_oversize_length_field_whose_body_never_comes_closes_at_t8_and_host_reconnects(
        caplog: pytest.LogCaptureFixture) -> None:
    async with selected_host("EQ-O", max_message_bytes=1 << 20) as (host, peer, peers):
        peer.write(struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 10)
        assert await peer.eof()
        again = await asyncio.wait_for(peers.get(), 5)
        await again.answer_select()
        await host.wait_state(HsmsState.SELECTED, 5)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("EQ-O" in line and "length field 4294967280" in line for line in lines)
    assert any("EQ-O" in line and "T8 expired" in line for line in lines)


async def test_new_connection_replaces_a_half_open_one_on_the_equipment() -> None:
    eq = HsmsPassive("EQ-H", HsmsConfig(**{**FAST, "mode": "passive", "port": 0}), echo_handler)
    async with running(eq):
        old = await raw_client(eq.port)
        old.write(frame(0xFFFF, 0, 0, False, SType.SELECT_REQ, 1))
        await old.read()
        new = await raw_client(eq.port)
        assert await old.eof()
        new.write(frame(0xFFFF, 0, 0, False, SType.SELECT_REQ, 1))
        rsp = await new.read()
        assert rsp.stype == SType.SELECT_RSP and rsp.function == 0


async def test_many_concurrent_requests_each_get_their_own_reply() -> None:
    eq, host = await pair()
    async with running(eq, host):
        await host.wait_state(HsmsState.SELECTED, 5)
        replies = await asyncio.gather(*(host.request(1, 3, L(U4(i))) for i in range(200)))
        assert [r.body[1] for r in replies] == [L(U4(i)) for i in range(200)]


def test_config_rejects_timers_outside_e37_ranges() -> None:
    import msgspec

    with pytest.raises(ValueError, match="t3_reply_timeout_s"):
        HsmsConfig(t3_reply_timeout_s=0.5)
    with pytest.raises(msgspec.ValidationError, match="t6_control_timeout_s 300"):
        msgspec.convert({"t6_control_timeout_s": 300}, HsmsConfig)
    assert HsmsConfig(t3_reply_timeout_s=0.5, e37_ranges=False).t3_reply_timeout_s == 0.5
    assert encode(None) == b""


async def test_data_right_behind_select_rsp_in_one_segment_is_accepted() -> None:
    async with raw_server() as (port, peers):
        host = HsmsActive("EQ-S", host_config(port), echo_handler)
        async with running(host):
            peer = await asyncio.wait_for(peers.get(), 5)
            req = await peer.read()
            # Select.rsp and an S1F1 W in one write: the S1F1 must not be rejected
            peer.write(bytes(frame(0xFFFF, 0, 0, False, SType.SELECT_RSP, req.system))
                       + bytes(frame(0, 1, 1, True, SType.DATA, 500)))
            reply = await peer.read_data()
            assert (reply.stream, reply.function, reply.system) == (1, 2, 500)


async def test_stop_while_connecting_ends_run_promptly() -> None:
    async with raw_server() as (port, peers):
        host = HsmsActive("EQ-STOP", host_config(port))
        task = asyncio.create_task(host.run(), name="test.stop")
        peer = await asyncio.wait_for(peers.get(), 5)
        await peer.read()  # the Select.req: the host is mid-connect now
        host.stop()
        peer.write(frame(0xFFFF, 0, 0, False, SType.SELECT_RSP, 1))
        await asyncio.wait_for(task, 5)
        assert host.state is HsmsState.NOT_CONNECTED


async def test_malformed_reply_in_pieces_fails_the_request_and_the_session_survives() -> None:
    async with selected_host("EQ-MR", echo_handler) as (host, peer, _peers):
        session = host.session
        request = asyncio.create_task(host.request(1, 3, L()))
        primary = await peer.read_data()
        bad = with_bad_u4_length(frame(0, 1, 4, False, SType.DATA, primary.system, L(U4(1))))
        after = bytes(frame(0, 1, 1, True, SType.DATA, 600))
        # The bad reply arrives in two reads, the second one ending inside the next frame:
        # the reader decodes it from its own buffer, and keeps part of that buffer after it.
        peer.write(bad[:6])
        await peer.writer.drain()
        await eventually(lambda: session.protocol._buf, what="first piece buffered")
        peer.write(bytes(bad[6:]) + after[:5])
        with pytest.raises(SecsDecodeError):
            await request
        s9 = await peer.read_data()
        assert (s9.stream, s9.function) == (9, 7)
        peer.write(after[5:])
        reply = await peer.read_data()
        assert (reply.stream, reply.function, reply.system) == (1, 2, 600)
        assert host.session is session and host.state is HsmsState.SELECTED


@pytest.mark.parametrize(("s9_function", "about"), [
    (9, (6, 11, True)),  # S9F9: the tool's own S6F11 W timed out waiting for our S6F12
    (7, (6, 12, False)),  # S9F7: the tool could not read our S6F12 (a reply, its system bytes)
])
async def test_s9_about_a_tool_transaction_leaves_our_request_with_the_same_system_open(
        s9_function: int, about: tuple[int, int, bool]) -> None:
    async with selected_host("EQ-9S", echo_handler) as (host, peer, _peers):
        request = asyncio.create_task(host.request(1, 3, L()))
        primary = await peer.read_data()
        # The tool numbers its own transactions: one of them has our request's system bytes.
        stream, function, wbit = about
        mhead = frame(0, stream, function, wbit, SType.DATA, primary.system)[4:14]
        peer.write(frame(0, 9, s9_function, False, SType.DATA, 7000, B(bytes(mhead))))
        peer.write(frame(0, 1, 1, True, SType.DATA, 7001))  # answered after the S9Fx
        assert (await peer.read_data()).system == 7001
        assert not request.done()
        peer.write(frame(0, 1, 4, False, SType.DATA, primary.system, L(U4(5))))
        assert (await asyncio.wait_for(request, 5)).body == L(U4(5))


async def test_unanswered_linktest_closes_on_t6_with_one_warning_and_host_reconnects(
        caplog: pytest.LogCaptureFixture) -> None:
    async with raw_server() as (port, peers):
        host = HsmsActive("EQ-LT", host_config(port, linktest_interval_s=0.05,
                                               t6_control_timeout_s=0.3), echo_handler)
        async with running(host):
            peer = await asyncio.wait_for(peers.get(), 5)
            await peer.answer_select()
            assert (await peer.read()).stype == SType.LINKTEST_REQ  # a half-open link: no answer
            assert await peer.eof()  # E37: T6 expiry closes the connection
            again = await asyncio.wait_for(peers.get(), 5)
            await again.answer_select()
            await host.wait_state(HsmsState.SELECTED, 5)
    # A tool that went quiet is the tool's doing, not a fabd bug: the loss WARNING, no ERROR.
    assert any("EQ-LT" in r.getMessage() and "T6 expired" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_malformed_body_with_a_wrong_device_id_is_answered_s9f1() -> None:
    # E5: a message for a device id we are not is unrecognized whatever its body holds;
    # S9F7 (illegal data) sent the tool's engineer after its body instead of its device id.
    async with selected_host("EQ-DM", echo_handler, device_id=3) as (_host, peer, _peers):
        peer.write(with_bad_u4_length(frame(7, 6, 11, True, SType.DATA, 31,
                                            L(U4(1), U4(3001)))))
        s9 = await peer.read_data()
        assert (s9.stream, s9.function) == (9, 1)
        assert parse_header(bytes(s9.body)).session_id == 7
        peer.write(frame(3, 1, 1, True, SType.DATA, 32))
        assert (await peer.read_data()).system == 32


async def test_malformed_data_message_before_select_is_rejected_entity_not_selected() -> None:
    # E37: no data messages before SELECTED; a malformed one was met with silence instead.
    eq = HsmsPassive("EQ-RM", HsmsConfig(**{**FAST, "mode": "passive", "port": 0}), echo_handler)
    async with running(eq):
        peer = await raw_client(eq.port)
        peer.write(with_bad_u4_length(frame(0, 6, 11, True, SType.DATA, 41,
                                            L(U4(1), U4(3001)))))
        rej = await peer.read()
        assert rej.stype == SType.REJECT_REQ and rej.system == 41
        assert rej.function == RejectReason.ENTITY_NOT_SELECTED


async def test_reply_with_an_unsupported_ptype_is_rejected_not_taken_as_the_reply() -> None:
    # E37: only PType 0 (SECS-II) is defined; any other is answered Reject.req (reason 2),
    # a secondary too. It used to complete our request with an empty body.
    async with selected_host("EQ-PT", echo_handler) as (host, peer, _peers):
        request = asyncio.create_task(host.request(1, 3, L()))
        primary = await peer.read_data()
        peer.write(frame(0, 1, 4, False, SType.DATA, primary.system, L(U4(5)), ptype=1))
        rej = await peer.read()
        assert rej.stype == SType.REJECT_REQ and rej.system == primary.system
        assert (rej.function, rej.stream) == (RejectReason.PTYPE_NOT_SUPPORTED, 1)
        assert not request.done()
        peer.write(frame(0, 1, 4, False, SType.DATA, primary.system, L(U4(5))))
        assert (await asyncio.wait_for(request, 5)).body == L(U4(5))


async def test_a_tool_dropping_the_host_right_after_each_select_is_one_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    """A tool that closed the connection right after every select (one that takes the
    select but not this host) got a WARNING, an INFO "back" and, in GEM, a whole start-up
    every T5 for as long as it did so; now it is one outage, said once, backing off."""
    caplog.set_level(logging.INFO, "fabd.hsms")
    async with raw_server() as (port, peers):
        host = HsmsActive("EQ-FLAP", host_config(port, reconnect_backoff_max_s=5.0))
        async with running(host):
            for _ in range(5):
                peer = await asyncio.wait_for(peers.get(), 10)
                await peer.answer_select()
                await host.wait_state(HsmsState.SELECTED, 5)
                peer.writer.close()  # and the host tries again
            peer = await asyncio.wait_for(peers.get(), 10)
            await peer.answer_select()
            await host.wait_state(HsmsState.SELECTED, 5)
    said = [(r.levelno, r.getMessage()) for r in caplog.records
            if "EQ-FLAP" in r.getMessage() and r.levelno >= logging.INFO
            and "endpoint stopped" not in r.getMessage()]
    assert [level for level, _ in said] == [logging.INFO, logging.WARNING, logging.INFO], said
    assert "lost" in said[1][1] and "back" in said[2][1]
