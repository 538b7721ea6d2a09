"""Typed OPC UA adapter errors: each subclass says whether to retry, reconfigure or give up."""

from __future__ import annotations

from daemon.errors import FabdError, RetryableError


class OpcUaError(FabdError):
    """Root of the OPC UA adapter's errors."""


class OpcUaConfigError(OpcUaError, ValueError):
    """The profile cannot work (bad node id, missing certificate): fix the config."""


class OpcUaConnectionError(OpcUaError, RetryableError):
    """The tool is unreachable or the session broke: the session retries with backoff."""


class OpcUaSecurityError(OpcUaConnectionError):
    """The secure channel or session was refused (untrusted certificate, wrong credentials).

    The session keeps retrying (the tool's trust list may be fixed meanwhile), but
    someone has to look at the PKI or the credentials.
    """


class OpcUaCommandError(OpcUaError):
    """A request to the tool cannot be served as configured (not configured, refused): give up."""


class OpcUaNotConnectedError(OpcUaCommandError, RetryableError):
    """The tool is not connected right now (or did not answer in time): retry later."""
