"""Start an asyncio program on the configured event loop (uvloop when available)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("fabd")


def run(main: Coroutine[Any, Any, int], event_loop: str = "uvloop") -> int:
    """Run `main` to completion and return its exit code."""
    factory = None
    if event_loop == "uvloop":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            log.warning("uvloop not installed; using the asyncio event loop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
