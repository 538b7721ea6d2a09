"""The harness itself: private servers answer, and eventually() fails when it should."""

import pytest
import redis.asyncio as aioredis

from tests.support import eventually


async def test_private_redis_answers_and_is_not_the_system_one(redis_url):
    assert ":6379/" not in redis_url
    client = aioredis.Redis.from_url(redis_url)
    await client.set("k", "v")
    assert await client.get("k") == b"v"
    await client.aclose()


async def test_own_redis_survives_restart(own_redis):
    client = aioredis.Redis.from_url(own_redis.url)
    assert await client.ping()
    own_redis.restart()
    await eventually(lambda: _ping(client), what="redis back")
    await client.aclose()


async def _ping(client):
    try:
        return await client.ping()
    except Exception:
        return False


async def test_eventually_raises_with_reason():
    with pytest.raises(AssertionError, match="never true"):
        await eventually(lambda: False, timeout_s=0.1, what="never true")
