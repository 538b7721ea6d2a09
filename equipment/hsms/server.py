"""Passive HSMS-SS (simulated equipment): listen on a port, accept the host, answer select.

HSMS-SS has one connection at a time: a new connection replaces the old one
(a host that reconnects after a half-open loss must not be locked out).
"""

from __future__ import annotations

import asyncio
import logging

from equipment.hsms.endpoint import HsmsEndpoint
from equipment.hsms.message import HsmsState
from equipment.hsms.protocol import HsmsProtocol

log = logging.getLogger("fabd.hsms")


class HsmsPassive(HsmsEndpoint):
    """Listen for the host on config.host:config.port (0: the OS picks; see `.port`)."""

    _server: asyncio.base_events.Server | None = None
    port: int = 0

    async def start(self) -> None:
        """Start listening; `.port` is the bound port afterwards."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.config.host, self.config.port,
                                                reuse_address=True, backlog=16)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> HsmsProtocol:
        old = self.session
        session = self._new_session()
        self.session = session
        if old is not None and old.state is not HsmsState.NOT_CONNECTED:
            old.close("replaced by a new connection from the host")
        return HsmsProtocol(session)

    async def run(self) -> None:
        """Serve until stop(): start if needed, run hooks on SELECTED and on loss."""
        if self._server is None:
            await self.start()
        try:
            while not self._stopping:
                if self.state is not HsmsState.SELECTED:
                    loop = asyncio.get_running_loop()
                    selected = loop.create_task(self.wait_state(HsmsState.SELECTED),
                                                name=f"hsms[{self.tool_id}].wait_selected")
                    stopped = loop.create_task(self._stop_event.wait(),
                                               name=f"hsms[{self.tool_id}].wait_stop")
                    await asyncio.wait((selected, stopped), return_when=asyncio.FIRST_COMPLETED)
                    selected.cancel()
                    stopped.cancel()
                    continue
                session = self.session
                assert session is not None
                log.info("hsms %s: host selected from %s", self.tool_id, session.peer)
                await self._call_hook(self.on_selected, session, "on_selected")
                reason = await asyncio.shield(session.closed)
                if session is self.session and not self._stopping:
                    log.warning("hsms %s: host connection lost: %s", self.tool_id, reason)
                await self._call_hook(self.on_lost, reason, "on_lost")
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        self._stopping = True
        self._stop_event.set()
        if self.session is not None:
            self.session.close("equipment stopped")
        if self._server is not None:
            self._server.close()
            self._server = None
