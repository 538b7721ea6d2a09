"""Active HSMS-SS (fabd as host): connect, select, and reconnect forever with jittered backoff."""

from __future__ import annotations

import asyncio
import logging
import random

from equipment import metrics
from equipment.hsms.endpoint import HsmsEndpoint
from equipment.hsms.errors import HsmsError
from equipment.hsms.protocol import HsmsProtocol
from equipment.reconnect import Outages

log = logging.getLogger("fabd.hsms")

# A connection up this long (or 2 x the backoff cap, if less) was a real one: its loss
# is a new outage, said again, and the next attempt waits T5 only.
STABLE_CONNECTION_S = 60.0


class HsmsActive(HsmsEndpoint):
    """Keep one tool SELECTED: connect, Select.req, hooks on SELECTED and on loss, reconnect.

    Run `await active.run()` as a named task; it returns after `stop()`.
    """

    async def connect_once(self) -> None:
        """Open the TCP connection and select (raises OSError, TimeoutError or HsmsError)."""
        loop = asyncio.get_running_loop()
        session = self._new_session()
        self.session = session
        cfg = self.config
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: HsmsProtocol(session), cfg.host, cfg.port),
                cfg.connect_timeout_s)
            await session.select()
        except BaseException:
            session.close("select failed", logging.DEBUG)
            raise

    async def run(self) -> None:
        """Supervise the connection until stop(): one WARNING when lost, one INFO when back.

        A connection lost within STABLE_CONNECTION_S of its select is the same outage (a
        tool that drops the host right after the select): the backoff goes on growing from
        T5 and nothing more is said, instead of a WARNING, an INFO and a GEM start-up every
        T5.
        """
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        outages = Outages(cfg.t5_connect_separation_s, cfg.reconnect_backoff_max_s,
                          random.Random(), floor_is_minimum=True,
                          stable_s=min(STABLE_CONNECTION_S, 2 * cfg.reconnect_backoff_max_s))
        ever_selected = False
        try:
            while not self._stopping:
                try:
                    await self.connect_once()
                except (OSError, TimeoutError, HsmsError) as exc:
                    if outages.failed():
                        log.warning("hsms %s: cannot reach the tool at %s: %s; retrying every "
                                    "%g..%g s", self.tool_id, where, exc or type(exc).__name__,
                                    cfg.t5_connect_separation_s, cfg.reconnect_backoff_max_s)
                    else:
                        log.debug("hsms %s: connect attempt %d to %s failed: %s",
                                  self.tool_id, outages.failures, where, exc)
                    await self._sleep(outages.delay_s())
                    continue
                session = self.session
                assert session is not None
                if self._stopping:  # stop() came while we were connecting
                    break
                attempts = outages.failures + 1
                if ever_selected:
                    metrics.RECONNECTS.labels(self.tool_id, "hsms").inc()
                if outages.up():
                    log.info("hsms %s: back: SELECTED on %s after %d attempt(s)",
                             self.tool_id, where, attempts)
                elif not ever_selected:
                    log.info("hsms %s: SELECTED on %s", self.tool_id, where)
                else:
                    log.debug("hsms %s: SELECTED again on %s", self.tool_id, where)
                ever_selected = True
                await self._call_hook(self.on_selected, session, "on_selected")
                reason = await asyncio.shield(session.closed)
                if self._stopping:
                    break
                if outages.lost():
                    log.warning("hsms %s: connection to %s lost: %s; reconnecting", self.tool_id,
                                where, reason)
                else:
                    log.debug("hsms %s: connection to %s lost again soon after the select: %s",
                              self.tool_id, where, reason)
                await self._call_hook(self.on_lost, reason, "on_lost")
                # E37 T5: leave at least T5 between connection attempts
                await self._sleep(outages.delay_s())
        finally:
            if self.session is not None:
                self.session.close("host stopped")
