"""Errors raised by the dispatch package; refused track-ins are results, never errors."""

from __future__ import annotations


class DispatchError(Exception):
    """Root of every error the dispatch package raises on purpose."""


class UnknownIdError(DispatchError, KeyError):
    """A lot, tool, route, product, recipe or setup id is not in the model: sync the model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


class ModelError(DispatchError, ValueError):
    """The fab description is inconsistent (bad step reference, duplicate id): fix the input."""


class PolicyError(DispatchError, ValueError):
    """A dispatch policy is invalid; `problems` lists (key path, reason) pairs to fix."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{source}: {path}: {reason}" if source else f"{path}: {reason}"
                 for path, reason in problems]
        super().__init__("\n".join(lines))
