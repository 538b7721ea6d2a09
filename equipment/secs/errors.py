"""Typed SECS errors: each one says which Stream 9 message answers it (SEMI E5 §9)."""

from __future__ import annotations

from daemon.errors import FabdError


class SecsError(FabdError):
    """Root of every SECS-II / HSMS error fabd raises.

    `s9_function` is the S9Fx function the receiver answers with (0: none).
    """

    s9_function: int = 0


class SecsDecodeError(SecsError, ValueError):
    """A received item is malformed; the receiver answers S9F7 (illegal data)."""

    s9_function = 7

    def __init__(self, reason: str, offset: int = -1) -> None:
        super().__init__(f"{reason} (at byte {offset})" if offset >= 0 else reason)
        self.reason = reason
        self.offset = offset


class SecsEncodeError(SecsError, ValueError):
    """An item cannot be encoded (value out of range, too long): a bug on our side."""
