"""Shared fixtures: private redis-server and mosquitto processes on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import MosquittoServer, PersistentRedis, RedisServer, new_workdir


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the numba kernels once, up front, into numba's cache.

    On a fresh checkout the first compile takes a minute or more; doing it here
    means the tests that start `fabd run` or a benchmark as a child process load
    the cached kernels instead of each compiling them under its own timeout.
    """
    import sys
    import time

    t0 = time.monotonic()
    print("\n[tests] warming numba kernels (a fresh checkout compiles them once)...",
          file=sys.stderr, flush=True)
    from dispatch import scorer
    from spc import kernel

    kernel.warm()
    scorer.warm()
    try:
        from bench.fabsim import run as fabsim_run
    except ImportError:
        fabsim_run = None
    if fabsim_run is not None:
        fabsim_run.warm()
    print(f"[tests] kernels ready in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)


def _private(prefix: str, make: Callable[[Path], Any]) -> Iterator[Any]:
    """Start a server made in a fresh work dir; stop it and remove the dir afterwards."""
    workdir = new_workdir(prefix)
    server = make(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (use `redis_url` for a clean database)."""
    yield from _private("redis", RedisServer)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session redis-server, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and restart."""
    yield from _private("redis-own", RedisServer)


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own that keeps its streams across a restart (AOF)."""
    yield from _private("redis-aof", PersistentRedis)


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    """One private anonymous mosquitto for the session."""
    yield from _private("mqtt", MosquittoServer)


@pytest.fixture
def own_mosquitto() -> Iterator[MosquittoServer]:
    """A mosquitto of the test's own (anonymous), which the test may restart."""
    yield from _private("mqtt-own", MosquittoServer)


@pytest.fixture
def mosquitto_with_password() -> Iterator[MosquittoServer]:
    """A private mosquitto that requires user `fab` with password `wafer`."""
    yield from _private("mqtt-pw", lambda workdir: MosquittoServer(workdir, username="fab",
                                                                   password="wafer"))
