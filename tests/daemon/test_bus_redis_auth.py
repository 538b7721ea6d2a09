"""Redis credentials from a file or env (never logged), a Redis that refuses entries, the bench."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from daemon.busconfig import RedisConfig
from daemon.redis_conn import RespConnection, make_client, redact
from tests.daemon.bus_support import define_master_data, read_stream, running_bus
from tests.support import RedisServer, eventually, new_workdir

SECRET = "s3cret-wafer"


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    workdir = new_workdir("redis-pw")
    server = RedisServer(workdir, password=SECRET)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


async def test_password_from_file_reaches_redis_and_never_shows_in_logs(
        redis_with_password, tmp_path, caplog, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)
    pw_file = tmp_path / "redis.pw"
    pw_file.write_text(SECRET + "\n")
    url = f"redis://127.0.0.1:{redis_with_password.port}/0"
    config = RedisConfig(url=url, password_file=str(pw_file))
    client = make_client(config)
    assert await client.ping()
    await client.aclose()
    conn = RespConnection(config)
    await conn.connect()
    await conn.close()
    # The env variable works too (systemd Environment= or a credential loaded into env).
    monkeypatch.setenv("FABD_TEST_PW", SECRET)
    client = make_client(RedisConfig(url=url, password_env="FABD_TEST_PW"))
    assert await client.ping()
    await client.aclose()
    assert SECRET not in caplog.text
    assert redact(f"redis://fab:{SECRET}@h:1/0") == "redis://fab:***@h:1/0"


async def test_wrong_password_is_an_error_not_a_hang(redis_with_password) -> None:
    conn = RespConnection(RedisConfig(url=f"redis://:nope@127.0.0.1:{redis_with_password.port}/0"))
    with pytest.raises(Exception, match=r"refused|WRONGPASS|invalid"):
        await conn.connect()


async def test_relay_waits_while_redis_refuses_entries_then_delivers(redis_url, tmp_path,
                                                                    caplog) -> None:
    r = redis_sync.Redis.from_url(redis_url)
    r.set("fab:lots", "not a stream")  # an operator mistake: XADD answers WRONGTYPE
    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        await bus.durable()
        await eventually(lambda: "WRONGTYPE" in caplog.text, what="loud error")
        assert bus.relay.depth == 1
        r.delete("fab:lots")
        assert await bus.drain(10)
    r.close()
    assert [e["type"] for e in read_stream(redis_url, "fab:lots")] == ["lot_created"]


def test_bench_quick_reports_the_contract_lines() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "bench", "bus", "--quick", "--json",
                          "--events", "5000"], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["metric"] for r in rows} == {"durable_publish_rate",
                                           "durable_publish_rate_vs_resp_packer"}
    for r in rows:
        assert set(r) == {"bench", "metric", "value", "unit", "baseline", "baseline_value",
                          "ratio"}
        assert r["value"] > 0 and r["baseline_value"] > 0 and r["unit"] == "events/s"
