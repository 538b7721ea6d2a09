"""Typed GEM host errors: each subclass says whether to retry, reconfigure or give up."""

from __future__ import annotations

from daemon.errors import FabdError, RetryableError


class GemError(FabdError):
    """Root of the GEM host session's errors."""


class GemConfigError(GemError, ValueError):
    """The tool config or driver profile cannot work (unknown profile, bad ids): fix the config."""


class GemNotCommunicatingError(GemError, RetryableError):
    """The tool is not connected or communications are not established: retry later."""


class GemTimeoutError(GemError, RetryableError):
    """The tool did not answer within T3; the connection stays up: retry or give up the request."""


class GemProtocolError(GemError):
    """The tool answered with something we cannot use (wrong S/F, malformed, S9Fx): give up."""


class GemStartupError(GemError, RetryableError):
    """A start-up step was refused by the tool (DRACK/LRACK/ERACK != 0); the session retries."""
