"""Typed OPC UA adapter errors: each subclass says whether to retry, reconfigure or give up."""

from __future__ import annotations


class OpcUaError(Exception):
    """Root of the OPC UA adapter's errors (re-root on the shared FabdError when it lands)."""


class OpcUaConfigError(OpcUaError, ValueError):
    """The profile cannot work (bad node id, missing certificate): fix the config."""


class OpcUaConnectionError(OpcUaError, ConnectionError):
    """The tool is unreachable or the session broke: the session retries with backoff."""


class OpcUaSecurityError(OpcUaConnectionError):
    """The secure channel was refused (untrusted certificate, wrong credentials): check the PKI."""


class OpcUaCommandError(OpcUaError):
    """A method call failed in a way the caller should see (not configured, not connected)."""
