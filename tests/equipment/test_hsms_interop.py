"""Interop with secsgem 0.3 over real sockets: our host selects a secsgem equipment and vice versa."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import secsgem.common
import secsgem.gem
import secsgem.hsms
from secsgem.gem.communication_state_machine import CommunicationState

from equipment.hsms import (
    HsmsActive,
    HsmsConfig,
    HsmsPassive,
    HsmsRejectedError,
    HsmsSession,
    HsmsState,
    Message,
    RejectReason,
)
from equipment.secs import A, B, L
from tests.equipment.test_hsms_session import FAST, running
from tests.support import eventually, free_port


def _secsgem_settings(port: int, passive: bool) -> secsgem.hsms.HsmsSettings:
    return secsgem.hsms.HsmsSettings(
        address="127.0.0.1", port=port, session_id=0,
        connect_mode=(secsgem.hsms.HsmsConnectMode.PASSIVE if passive
                      else secsgem.hsms.HsmsConnectMode.ACTIVE),
        device_type=(secsgem.common.DeviceType.EQUIPMENT if passive
                     else secsgem.common.DeviceType.HOST))


_SECSGEM_EQUIPMENT = """
import os, sys
import secsgem.common, secsgem.gem, secsgem.hsms
eq = secsgem.gem.GemEquipmentHandler(secsgem.hsms.HsmsSettings(
    address="127.0.0.1", port=int(sys.argv[1]), session_id=0,
    connect_mode=secsgem.hsms.HsmsConnectMode.PASSIVE,
    device_type=secsgem.common.DeviceType.EQUIPMENT))
eq.enable()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
os._exit(0)  # secsgem's server thread is not a daemon: do not wait for it
"""


@contextlib.asynccontextmanager
async def secsgem_equipment() -> AsyncIterator[int]:
    """A plain secsgem 0.3 GEM equipment listening on a free port (yielded), in a child
    process: its listening thread is not a daemon thread and can outlive disable(), which
    would keep a test process from exiting."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SECSGEM_EQUIPMENT, str(port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
        yield port
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _first_request(host: HsmsActive, stream: int, function: int, body: L) -> Message:
    """The first request on a new connection to a plain secsgem equipment.

    secsgem 0.3 starts a connection's receiver before its CONNECTED state: a Select.req
    that wins that race is answered, but secsgem stays NOT SELECTED and rejects the next
    message (reason 4). fabd then drops the connection and selects again (HsmsSession,
    Reject.req handling), which is what this waits for, once.
    """
    await host.wait_state(HsmsState.SELECTED, 10)
    first = host.session
    try:
        return await host.request(stream, function, body)
    except HsmsRejectedError as exc:
        if exc.reason != RejectReason.ENTITY_NOT_SELECTED:
            raise
    await eventually(lambda: host.session is not first and host.state is HsmsState.SELECTED,
                     timeout_s=30, what="selected again after secsgem's reject")
    return await host.request(stream, function, body)


async def test_our_host_selects_a_secsgem_equipment_and_talks_gem() -> None:
    async with secsgem_equipment() as port:

        def host_handler(session: HsmsSession, msg: Message) -> None:
            # secsgem's equipment also opens with S1F13: answer it as a GEM host does
            if (msg.stream, msg.function) == (1, 13):
                session.reply_nowait(msg, L(B(b"\x00"), L()))
            elif msg.wbit:
                session.send_s9(5, msg.header)

        host = HsmsActive("SG-EQ", HsmsConfig(**{**FAST, "port": port}), host_handler)
        async with running(host):
            # S1F13 establish communications: COMMACK 0 and the equipment's MDLN/SOFTREV
            reply = await _first_request(host, 1, 13, L())
            assert (reply.stream, reply.function) == (1, 14)
            commack, mdln_softrev = reply.body
            assert commack == B(b"\x00") and len(mdln_softrev) == 2
            # S1F1 are you there
            reply = await host.request(1, 1)
            assert reply.function == 2 and isinstance(reply.body, L)
            # S1F11 status variable namelist: secsgem always has a few of its own
            reply = await host.request(1, 11, L())
            assert reply.function == 12 and len(reply.body) > 0
            await host.session.linktest()


async def test_secsgem_host_selects_our_passive_equipment_and_establishes_communication() -> None:
    seen: list[str] = []

    def handler(session: HsmsSession, msg: Message) -> None:
        seen.append(msg.sf)
        if (msg.stream, msg.function) == (1, 13):
            session.reply_nowait(msg, L(B(b"\x00"), L(A("FABD-SIM"), A("1.0"))))
        elif (msg.stream, msg.function) == (1, 1):
            session.reply_nowait(msg, L(A("FABD-SIM"), A("1.0")))
        elif (msg.stream, msg.function) == (2, 37):
            session.reply_nowait(msg, B(b"\x00"))
        elif msg.wbit:
            session.send_s9(5, msg.header)

    eq = HsmsPassive("OUR-EQ", HsmsConfig(**{**FAST, "mode": "passive", "port": 0}), handler)
    await eq.start()
    host = secsgem.gem.GemHostHandler(_secsgem_settings(eq.port, passive=False))
    async with running(eq):
        host.enable()
        try:
            await eq.wait_state(HsmsState.SELECTED, 10)
            await eventually(lambda: host.communication_state.current == CommunicationState.COMMUNICATING,
                             what="secsgem host COMMUNICATING with our equipment")
            reply = await asyncio.to_thread(host.are_you_there)
            assert host.settings.streams_functions.decode(reply).get() == ["FABD-SIM", "1.0"]
            ack = await asyncio.to_thread(host.send_and_waitfor_response,
                                          host.stream_function(2, 37)({"CEED": True, "CEID": [3001]}))
            assert host.settings.streams_functions.decode(ack).get() == 0
            assert "S1F13" in seen and "S2F37" in seen
        finally:
            await asyncio.to_thread(host.disable)
