"""Interop with secsgem 0.3 over real sockets: our host selects a secsgem equipment and vice versa."""

from __future__ import annotations

import asyncio

import secsgem.common
import secsgem.gem
import secsgem.hsms
from secsgem.gem.communication_state_machine import CommunicationState

from equipment.hsms import HsmsActive, HsmsConfig, HsmsPassive, HsmsSession, HsmsState, Message
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


async def test_our_host_selects_a_secsgem_equipment_and_talks_gem() -> None:
    port = free_port()
    equipment = secsgem.gem.GemEquipmentHandler(_secsgem_settings(port, passive=True))
    equipment.enable()
    try:
        host = HsmsActive("SG-EQ", HsmsConfig(**{**FAST, "port": port}))
        async with running(host):
            await host.wait_state(HsmsState.SELECTED, 10)
            # S1F13 establish communications: COMMACK 0 and the equipment's MDLN/SOFTREV
            reply = await host.request(1, 13, L())
            assert (reply.stream, reply.function) == (1, 14)
            commack, mdln_softrev = reply.body
            assert commack == B(b"\x00") and len(mdln_softrev) == 2
            # S1F1 are you there
            reply = await host.request(1, 1)
            assert reply.function == 2 and isinstance(reply.body, L)
            # S1F3 selected status: the clock SV secsgem always has (SVID 1002 in secsgem's own set)
            reply = await host.request(1, 11, L())
            assert reply.function == 12 and len(reply.body) > 0
            await host.session.linktest()
    finally:
        await asyncio.to_thread(equipment.disable)


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
