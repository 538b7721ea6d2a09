"""Honour a cancellation that a library swallowed (Python 3.11).

`asyncio.wait_for` inside asyncua and aiomqtt, and redis-py's read timeout of a
blocking command, can swallow a cancel that races with their own completion:
the task stays `cancelling()` but no CancelledError comes. Long-running loops
call `raise_if_cancelled()` once per turn so a stop always stops.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was cancelled and the cancel got lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
