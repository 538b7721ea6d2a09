"""Test support: real redis-server and mosquitto on free ports, and `eventually()`.

Tests talk to real peers. These helpers start private servers on free
loopback ports (never the machine's own services) and stop them afterwards.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from daemon.localsvc import MosquittoServer, RedisServer, free_port

__all__ = ["MosquittoServer", "PersistentRedis", "RedisServer", "eventually", "free_port",
           "new_workdir"]


class PersistentRedis(RedisServer):
    """A redis-server that keeps its streams across a restart (AOF), like a production one."""

    def argv(self) -> list[str]:
        args = super().argv()
        i = args.index("--appendonly")
        args[i + 1] = "yes"
        return [*args, "--appendfsync", "always"]


def new_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"fabd-{prefix}-"))


async def eventually(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `predicate` (sync or async) until it returns a truthy value; fail after a deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = predicate()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s (last value: {last!r})")
        await asyncio.sleep(interval_s)
