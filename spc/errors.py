"""SPC errors: one root, subclasses that say whether to fix the input or the config."""

from __future__ import annotations


class SpcError(Exception):
    """Root of every SPC error (a FabdError once the daemon defines that root)."""


class SpcConfigError(SpcError, ValueError):
    """A chart spec or limit is unusable: fix the configuration, retrying will not help."""


class UnknownChartError(SpcError, KeyError):
    """No chart is registered under this key or id: register it first."""


class SpcInputError(SpcError, ValueError):
    """A series given to the command line is not numeric: fix the named line."""
