"""fabd's error tree: every error says whether to retry, reconfigure or give up."""

from __future__ import annotations


class FabdError(Exception):
    """Root of every error fabd raises on purpose."""


class RetryableError(FabdError):
    """A peer or resource is unavailable for now; the operation may succeed later."""


class ConfigError(FabdError):
    """The configuration is wrong: fix the named keys and start again."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems  # (key path, reason)
        self.source = source
        lines = [f"{source}: {path}: {reason}" if source else f"{path}: {reason}"
                 for path, reason in problems]
        super().__init__("\n".join(lines))


class FatalError(FabdError):
    """Something the daemon cannot carry on without; it stops with a non-zero exit."""
