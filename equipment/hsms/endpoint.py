"""What active and passive HSMS endpoints share: the tool id, the current session, state waits,
the send/request API that follows the session across reconnects, metrics and the one-line logs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from equipment import metrics
from equipment.hsms.config import HsmsConfig
from equipment.hsms.errors import HsmsConnectionLostError, HsmsNotSelectedError
from equipment.hsms.message import HsmsState, Message
from equipment.hsms.session import HsmsSession, MessageHandler
from equipment.secs import Item

log = logging.getLogger("fabd.hsms")

SessionHook = Callable[[HsmsSession], Awaitable[None] | None]
StateListener = Callable[[HsmsState], None]


class HsmsEndpoint:
    """One tool's HSMS-SS endpoint; subclasses decide how connections come (connect or accept)."""

    def __init__(self, tool_id: str, config: HsmsConfig, handler: MessageHandler | None = None,
                 *, on_selected: SessionHook | None = None,
                 on_lost: Callable[[str], Awaitable[None] | None] | None = None) -> None:
        self.tool_id = tool_id
        self.config = config
        self.handler = handler
        self.on_selected = on_selected
        self.on_lost = on_lost
        self.session: HsmsSession | None = None
        self._listeners: list[StateListener] = []
        self._waiters: list[tuple[HsmsState, asyncio.Future]] = []
        self._stopping = False
        self._stop_event = asyncio.Event()

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> HsmsState:
        """Return the E37 state of the current connection."""
        return self.session.state if self.session is not None else HsmsState.NOT_CONNECTED

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(state)` on every state change; return a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_state(self, state: HsmsState, timeout_s: float | None = None) -> None:
        """Wait until the endpoint is in `state` (TimeoutError after `timeout_s`)."""
        if self.state is state:
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (state, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout_s)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _session_state(self, session: HsmsSession, state: HsmsState) -> None:
        if session is not self.session:
            return
        metrics.CONNECTED.labels(self.tool_id, "hsms").set(1 if state is HsmsState.SELECTED else 0)
        for listener in list(self._listeners):
            listener(state)
        for want, fut in list(self._waiters):
            if want is state and not fut.done():
                fut.set_result(None)

    def _new_session(self) -> HsmsSession:
        return HsmsSession(self.tool_id, self.config, self.handler, self._session_state)

    async def _call_hook(self, hook: Callable | None, arg: object, what: str) -> None:
        if hook is None:
            return
        try:
            result = hook(arg)
            if inspect.isawaitable(result):
                await result
        except (HsmsConnectionLostError, HsmsNotSelectedError) as exc:
            log.debug("hsms %s: %s hook stopped by the connection: %s", self.tool_id, what, exc)
        except Exception:
            log.exception("hsms %s: %s hook failed", self.tool_id, what)

    # --- the API for the GEM layer (follows the current session) ---------------------------

    def _current(self) -> HsmsSession:
        session = self.session
        if session is None or session.state is HsmsState.NOT_CONNECTED:
            raise HsmsConnectionLostError(f"{self.tool_id}: not connected")
        return session

    async def request(self, stream: int, function: int, body: Item | None = None, *,
                      timeout_s: float | None = None) -> Message:
        """Send a W-bit primary on the current session and return the reply (see HsmsSession)."""
        return await self._current().request(stream, function, body, timeout_s=timeout_s)

    async def send(self, stream: int, function: int, body: Item | None = None, *,
                   reply_to: Message | None = None) -> None:
        """Send a data message on the current session (a reply when `reply_to` is given)."""
        await self._current().send(stream, function, body, reply_to=reply_to)

    def send_s9(self, function: int, offending_header: bytes) -> None:
        """Send S9Fx with the offending header on the current session."""
        self._current().send_s9(function, offending_header)

    def stop(self) -> None:
        """Ask run() to finish: close the connection and stop reconnecting or listening."""
        self._stopping = True
        self._stop_event.set()
        if self.session is not None:
            self.session.close("endpoint stopped")

    async def _sleep(self, delay_s: float) -> None:
        """Sleep, returning early when stop() is called."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), delay_s)
        except TimeoutError:
            pass
