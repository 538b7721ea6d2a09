"""A session state that tests and the daemon can wait on instead of sleeping (STYLE: explicit states)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

S = TypeVar("S")


class StateWatch(Generic[S]):
    """Mixin: `state`, `_set_state()` and `await wait_state(s)` for a session's state enum."""

    _state: S
    _state_changed: asyncio.Event

    def _init_state(self, initial: S) -> None:
        self._state = initial
        self._state_changed = asyncio.Event()

    @property
    def state(self) -> S:
        return self._state

    def _set_state(self, state: S) -> None:
        self._state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def wait_state(self, state: S, timeout_s: float = 10.0) -> None:
        """Wait until the session is in `state` (TimeoutError after timeout_s)."""
        async with asyncio.timeout(timeout_s):
            while self._state is not state:
                await self._state_changed.wait()
