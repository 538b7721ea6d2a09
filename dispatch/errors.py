"""Errors raised by the dispatch package; refused track-ins are results, never errors."""

from __future__ import annotations

from daemon.errors import ConfigError, FabdError


class DispatchError(FabdError):
    """Root of every error the dispatch package raises on purpose."""


class UnknownIdError(DispatchError, KeyError):
    """A lot, tool, route, product, recipe or setup id is not in the model: sync the model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


class ModelError(DispatchError, ValueError):
    """The fab description is inconsistent (bad step reference, duplicate id): fix the input."""


class PolicyError(DispatchError, ConfigError):
    """A dispatch policy is invalid: reconfigure. `problems` lists (key path, reason) pairs."""
