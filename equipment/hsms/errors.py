"""HSMS errors: retry (connection lost, not selected, T3), or look at the peer (rejected, S9)."""

from __future__ import annotations

from daemon.errors import RetryableError
from equipment.secs.errors import SecsError


class HsmsError(SecsError):
    """Root of the HSMS transport errors."""


class HsmsConnectionLostError(HsmsError, RetryableError):
    """The TCP connection closed before the transaction finished; retry once SELECTED again."""


class HsmsNotSelectedError(HsmsError, RetryableError):
    """No SELECTED session to send on right now; retry after the supervisor reconnects."""


class HsmsReplyTimeoutError(HsmsError, RetryableError):
    """The peer did not reply within T3; the connection stays up (E37)."""

    s9_function = 9


class HsmsControlTimeoutError(HsmsError, RetryableError):
    """A control transaction (select, deselect, linktest) got no response within T6."""


class HsmsRejectedError(HsmsError):
    """The peer rejected our message (Reject.req) or refused select; `reason` is its code."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class HsmsStream9Error(HsmsError):
    """The peer answered our primary message with S9Fx (`s9_function`) instead of a reply."""

    def __init__(self, message: str, s9_function: int) -> None:
        super().__init__(message)
        self.s9_function = s9_function


class HsmsProtocolError(HsmsError):
    """The byte stream broke the framing rules (over-long length field, short header)."""
