"""Shared fixtures: private redis-server and mosquitto processes on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support import MosquittoServer, RedisServer, new_workdir


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (use `redis_url` for a clean database)."""
    workdir = new_workdir("redis")
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


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
    workdir = new_workdir("redis-own")
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    """One private anonymous mosquitto for the session."""
    workdir = new_workdir("mqtt")
    server = MosquittoServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_mosquitto() -> Iterator[MosquittoServer]:
    """A mosquitto of the test's own (anonymous), which the test may restart."""
    workdir = new_workdir("mqtt-own")
    server = MosquittoServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mosquitto_with_password() -> Iterator[MosquittoServer]:
    """A private mosquitto that requires user `fab` with password `wafer`."""
    workdir = new_workdir("mqtt-pw")
    server = MosquittoServer(workdir, username="fab", password="wafer")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
