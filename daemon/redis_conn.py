"""Redis connections from config: URL, credentials (file or env, never logged), TLS, backoff.

The loops that use Redis (relay, ERP intake) own their reconnect policy: on a
connection error they log once, wait `Backoff.next()` and try again, and log
once more when Redis is back. redis-py's own retries are switched off so that a
down Redis shows up here at once instead of inside a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daemon.busconfig import RedisConfig
from daemon.errors import ConfigError, FabdError

log = logging.getLogger(__name__)
T = TypeVar("T")

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


class ReplyError(FabdError):
    """Redis answered a command with an error (WRONGTYPE, NOPERM, ...): reconfigure, then retry."""


class Script:
    """A Lua script run with EVALSHA; `RespConnection.run_script` sends it whole when needed."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


class RespConnection:
    """A minimal RESP2 connection for the relay's hot path: packed commands, small replies.

    redis-py spends ~40 µs of Python per pipelined XADD (argument encoding, reply
    objects); the relay sends millions of them, so it writes the RESP bytes itself
    (see `daemon.relay.Publisher`) and parses only the short reply. Auth,
    database selection and TLS follow the same config as every other client.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the socket (TCP, TLS or unix), AUTH and SELECT."""
        try:
            await self._connect()
        except BaseException:
            # A setup that timed out (or was cancelled) leaves its AUTH/SELECT replies
            # unread: reused, every later reply would be taken for the one before it.
            await self.close()
            raise

    async def _connect(self) -> None:
        from redis.asyncio.connection import parse_url

        opts = parse_url(self.config.url)
        async with asyncio.timeout(self.config.connect_timeout_s):
            if "path" in opts:
                self._reader, self._writer = await asyncio.open_unix_connection(opts["path"])
            else:
                ssl_ctx = None
                if self.config.url.startswith("rediss://"):
                    import ssl

                    ssl_ctx = ssl.create_default_context(cafile=self.config.tls_ca_file or None)
                    if self.config.tls_cert_file:
                        ssl_ctx.load_cert_chain(self.config.tls_cert_file,
                                                self.config.tls_key_file or None)
                self._reader, self._writer = await asyncio.open_connection(
                    opts.get("host", "127.0.0.1"), opts.get("port", 6379), ssl=ssl_ctx)
            self._buf.clear()
            password = read_password(self.config) or opts.get("password")
            username = self.config.username or opts.get("username")
            hello: list[list[bytes]] = []
            if password:
                hello.append([b"AUTH", *([username.encode()] if username else []),
                              password.encode()])
            if opts.get("db"):
                hello.append([b"SELECT", str(opts["db"]).encode()])
            if hello:
                self._writer.write(b"".join(pack_command(c) for c in hello))
                errors = await self._replies(len(hello))
                if errors:
                    raise ReplyError(f"Redis refused the connection setup: {errors[0]}")

    async def pipeline(self, packed: bytes, n_replies: int) -> list[str]:
        """Send packed commands; wait for n replies; return the error replies (usually [])."""
        return await self._exchange((packed,), self._replies, n_replies)

    async def call(self, *packed: bytes) -> object:
        """Send one command (its RESP bytes, in parts) and return its reply.

        Replies come back as int, bytes, None or a list of them; an error reply is
        returned as a `ReplyError`, not raised (the connection stays usable).
        """
        return await self._exchange(packed, self._reply)

    async def run_script(self, script: Script, n_args: int, args: bytes) -> object:
        """EVALSHA `script`; EVAL it if Redis lost it. `args`: n_args packed (numkeys, KEYS, ARGV)."""
        reply = await self.call(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (n_args + 2, script.sha),
                                args)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # A restarted Redis (or SCRIPT FLUSH) forgot it; nothing ran. EVAL caches it again.
            src = script.source
            reply = await self.call(b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (n_args + 2,
                                                                              len(src), src),
                                    args)
        return reply

    async def _exchange(self, packed: tuple[bytes, ...], read: Callable[..., Awaitable[T]],
                        *read_args: int) -> T:
        if not self.connected:
            await self.connect()
        assert self._writer is not None
        try:
            async with asyncio.timeout(self.config.command_timeout_s):
                self._writer.writelines(packed)
                await self._writer.drain()
                return await read(*read_args)
        except BaseException:
            await self.close()  # the reply stream is out of step now: start afresh
            raise

    async def _reply(self) -> object:
        buf = self._buf
        while True:
            value, pos = parse_reply(buf, 0)
            if value is not INCOMPLETE:
                del buf[:pos]
                return value
            assert self._reader is not None
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            buf += chunk

    async def _replies(self, n: int) -> list[str]:
        buf = self._buf
        errors: list[str] = []
        pos = 0
        got = 0
        while got < n:
            while got < n:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                kind = buf[pos]
                if kind == 36:  # '$' bulk string: the entry id
                    size = int(buf[pos + 1:end])
                    nxt = end + 2 if size < 0 else end + 4 + size
                    if nxt > len(buf):
                        break
                elif kind == 42:  # '*' an array reply: not sent by XADD/AUTH/SELECT
                    raise ReplyError("unexpected array reply from Redis")
                else:  # '+OK', ':n', '-ERR ...'
                    nxt = end + 2
                    if kind == 45:
                        errors.append(buf[pos + 1:end].decode("utf-8", "replace"))
                pos = nxt
                got += 1
            if got < n:
                del buf[:pos]
                pos = 0
                assert self._reader is not None
                chunk = await self._reader.read(1 << 20)
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                buf += chunk
        del buf[:pos]
        return errors

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


INCOMPLETE = object()  # parse_reply: the buffer ends inside the reply


def parse_reply(buf: bytearray, pos: int) -> tuple[object, int]:
    """Parse the RESP2 reply at `pos`: (value, position after it), or (INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return INCOMPLETE, pos
    kind, line = buf[pos], bytes(buf[pos + 1:end])
    if kind == 36:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        if end + 4 + size > len(buf):
            return INCOMPLETE, pos
        return bytes(buf[end + 2:end + 2 + size]), end + 4 + size
    if kind == 42:  # '*' array
        items: list[object] = []
        nxt = end + 2
        for _ in range(int(line)):
            item, nxt = parse_reply(buf, nxt)
            if item is INCOMPLETE:
                return INCOMPLETE, pos
            items.append(item)
        return (items if int(line) >= 0 else None), nxt
    if kind == 58:  # ':' integer
        return int(line), end + 2
    if kind == 45:  # '-' error
        return ReplyError(line.decode("utf-8", "replace")), end + 2
    return line, end + 2  # '+' simple string


def pack_command(args: list[bytes]) -> bytes:
    """Encode one command in RESP2."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


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
