"""Active HSMS-SS (fabd as host): connect, select, and reconnect forever with jittered backoff."""

from __future__ import annotations

import asyncio
import logging
import random

from equipment import metrics
from equipment.hsms.endpoint import HsmsEndpoint
from equipment.hsms.errors import HsmsError
from equipment.hsms.protocol import HsmsProtocol

log = logging.getLogger("fabd.hsms")


class HsmsActive(HsmsEndpoint):
    """Keep one tool SELECTED: connect, Select.req, hooks on SELECTED and on loss, reconnect.

    Run `await active.run()` as a named task; it returns after `stop()`.
    """

    def backoff_s(self, attempt: int) -> float:
        """Return the wait before connect attempt `attempt` (0-based): jittered, T5 the floor."""
        t5 = self.config.t5_connect_separation_s
        ceiling = min(self.config.reconnect_backoff_max_s, t5 * 2.0 ** min(attempt, 30))
        return random.uniform(t5, max(t5, ceiling))

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
        """Supervise the connection until stop(): one WARNING when lost, one INFO when back."""
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        attempt = 0
        ever_selected = False
        down_logged = False
        try:
            while not self._stopping:
                try:
                    await self.connect_once()
                except (OSError, TimeoutError, HsmsError) as exc:
                    if not down_logged:
                        log.warning("hsms %s: cannot reach the tool at %s: %s; retrying every "
                                    "%g..%g s", self.tool_id, where, exc or type(exc).__name__,
                                    cfg.t5_connect_separation_s, cfg.reconnect_backoff_max_s)
                        down_logged = True
                    else:
                        log.debug("hsms %s: connect attempt %d to %s failed: %s",
                                  self.tool_id, attempt + 1, where, exc)
                    await self._sleep(self.backoff_s(attempt))
                    attempt += 1
                    continue
                session = self.session
                assert session is not None
                if self._stopping:  # stop() came while we were connecting
                    break
                if ever_selected:
                    metrics.RECONNECTS.labels(self.tool_id, "hsms").inc()
                    log.info("hsms %s: back: SELECTED on %s after %d attempt(s)",
                             self.tool_id, where, attempt + 1)
                else:
                    log.info("hsms %s: SELECTED on %s", self.tool_id, where)
                attempt = 0
                ever_selected = True
                down_logged = False
                await self._call_hook(self.on_selected, session, "on_selected")
                reason = await asyncio.shield(session.closed)
                if self._stopping:
                    break
                log.warning("hsms %s: connection to %s lost: %s; reconnecting", self.tool_id,
                            where, reason)
                down_logged = True
                await self._call_hook(self.on_lost, reason, "on_lost")
                # E37 T5: leave at least T5 between connection attempts
                await self._sleep(self.backoff_s(0))
        finally:
            if self.session is not None:
                self.session.close("host stopped")
