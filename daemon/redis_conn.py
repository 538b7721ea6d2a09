"""Redis connections from config: URL, credentials (file or env, never logged), TLS, backoff.

The loops that use Redis (relay, ERP intake) own their reconnect policy: on a
connection error they log once, wait `Backoff.next()` and try again, and log
once more when Redis is back. redis-py's own retries are switched off so that a
down Redis shows up here at once instead of inside a command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daemon.busconfig import RedisConfig
from daemon.errors import ConfigError

log = logging.getLogger(__name__)

# What "Redis is unreachable for now" looks like; anything else is a bug or a config error.
REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, ConnectionError, OSError)


def read_password(config: RedisConfig) -> str | None:
    """Return the password from `password_file` (wins) or the `password_env` variable, or None."""
    if config.password_file:
        try:
            return Path(config.password_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError([("redis.password_file", f"cannot read: {exc.strerror}")]) from None
    if config.password_env:
        return os.environ.get(config.password_env) or None
    return None


def redact(url: str) -> str:
    """Return the URL without any password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def make_client(config: RedisConfig, **overrides) -> aioredis.Redis:
    """Build (not connect) an asyncio Redis client from config; connections open on first use."""
    kwargs: dict = {
        "socket_connect_timeout": config.connect_timeout_s,
        "socket_timeout": config.command_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    password = read_password(config)
    if password is not None:
        kwargs["password"] = password
    if config.username:
        kwargs["username"] = config.username
    if config.url.startswith("rediss://"):
        if config.tls_ca_file:
            kwargs["ssl_ca_certs"] = config.tls_ca_file
        if config.tls_cert_file:
            kwargs["ssl_certfile"] = config.tls_cert_file
            kwargs["ssl_keyfile"] = config.tls_key_file or None
        kwargs["ssl_cert_reqs"] = "required"
    kwargs.update(overrides)
    return aioredis.Redis.from_url(config.url, **kwargs)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation redis-py swallowed.

    On Python 3.11 a cancel that lands while redis-py's read timeout of a
    blocking command (XREADGROUP BLOCK) expires turns into a timeout that
    redis-py reports as an empty reply; the task is left `cancelling()` with no
    CancelledError to come. Loops call this once per turn so a stop always stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Exponential reconnect delay with jitter: initial, x2, ... up to max; reset on success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next_s = initial_s

    def next(self) -> float:
        delay = self._next_s
        self._next_s = min(self.max_s, self._next_s * 2)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next_s = self.initial_s


class Outage:
    """Logs a Redis outage once when it starts and once when it ends (STYLE: changes, not polls)."""

    def __init__(self, what: str, url: str) -> None:
        self.what = what
        self.url = redact(url)
        self.down_since: float | None = None

    def down(self, exc: BaseException, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            log.warning("%s: Redis %s unreachable (%s); retrying with backoff", self.what,
                        self.url, exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))

    def up(self, now: float) -> None:
        if self.down_since is not None:
            log.info("%s: Redis %s reachable again after %.1f s", self.what, self.url,
                     now - self.down_since)
            self.down_since = None
