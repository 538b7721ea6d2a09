"""SPC errors: one root, subclasses that say whether to fix the input or the config."""

from __future__ import annotations

from daemon.errors import FabdError


class SpcError(FabdError):
    """Root of every SPC error."""


class SpcConfigError(SpcError, ValueError):
    """A chart spec or limit is unusable: fix the configuration, retrying will not help."""


class UnknownChartError(SpcError, KeyError):
    """No chart is registered under this key or id: register it first."""


class SpcInputError(SpcError, ValueError):
    """A series given to the command line is not numeric: fix the named line."""
