"""A peer that no longer counts the host SELECTED while the TCP connection stays up."""

from __future__ import annotations

import asyncio
import logging

import pytest

from equipment.hsms import HsmsRejectedError, HsmsState
from equipment.hsms.message import RejectReason, SType, frame
from tests.equipment.test_hsms_session import selected_host
from tests.support import eventually


async def test_a_peer_rejecting_as_not_selected_gets_a_new_connection_and_select() -> None:
    """A tool that reset its HSMS state without dropping TCP answers everything with
    Reject.req reason 4 (entity not selected). The host stayed SELECTED on that connection
    for ever: every command to the tool failed, and nothing reconnected."""
    async with selected_host("EQ-NS") as (host, peer, peers):
        first = host.session
        request = asyncio.create_task(host.request(1, 1))
        primary = await peer.read_data()
        peer.write(frame(primary.session_id, primary.stream, int(RejectReason.ENTITY_NOT_SELECTED),
                         False, SType.REJECT_REQ, primary.system))
        with pytest.raises(HsmsRejectedError):
            await request
        again = await asyncio.wait_for(peers.get(), 10)   # the host connects anew ...
        await again.answer_select()                        # ... and selects again
        await eventually(lambda: host.session is not first
                         and host.state is HsmsState.SELECTED, what="selected again")


async def test_a_peer_rejecting_linktest_turns_it_off_with_a_warning_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fabd.hsms")
    async with selected_host("EQ-LT", linktest_interval_s=0.05) as (host, peer, _peers):
        req = await peer.read()
        assert req.stype == SType.LINKTEST_REQ
        peer.write(frame(0xFFFF, SType.LINKTEST_REQ, int(RejectReason.STYPE_NOT_SUPPORTED),
                         False, SType.REJECT_REQ, req.system))
        await eventually(lambda: [r for r in caplog.records if "linktest" in r.getMessage()
                                  and r.levelno == logging.WARNING], what="the warning")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        with pytest.raises(TimeoutError):
            await peer.read(timeout_s=0.5)      # no more Linktest.req on this connection
        assert host.state is HsmsState.SELECTED
