"""Redis credentials from a file or env (never logged), a Redis that refuses entries, the bench."""

from __future__ import annotations

import asyncio
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


async def test_the_relay_needs_eval_and_evalsha_besides_xadd_and_says_so(own_redis, tmp_path,
                                                                          caplog) -> None:
    # The ACL the README documents for the relay's user. With only +xadd (all the relay
    # needed before it published with a script) Redis refuses, and the ERROR names the fix.
    r = redis_sync.Redis.from_url(own_redis.url)
    r.execute_command("ACL", "SETUSER", "relay", "on", ">pw", "~fab:*", "+xadd")
    url = f"redis://relay:pw@127.0.0.1:{own_redis.port}/0"
    async with running_bus(url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        bus.mes.create_lot("L1", "PO", "P-A", 25)
        await bus.durable()
        await eventually(lambda: "NOPERM" in caplog.text, what="loud error")
        assert "+xadd +evalsha +eval" in caplog.text
        assert bus.relay.depth == 1
        r.execute_command("ACL", "SETUSER", "relay", "+evalsha", "+eval")
        assert await bus.drain(10)
    r.close()
    assert [e["type"] for e in read_stream(own_redis.url, "fab:lots")] == ["lot_created"]


async def test_redis_at_maxmemory_holds_every_entry_back_then_delivers_each_once(
        own_redis, tmp_path, caplog) -> None:
    # maxmemory with noeviction: Redis refuses the writes (OOM). Nothing may be appended
    # out of order or twice while it lasts, and everything arrives once memory is there.
    r = redis_sync.Redis.from_url(own_redis.url)
    async with running_bus(own_redis.url, tmp_path, erp=False) as bus:
        define_master_data(bus)
        bus.mes.alarm("ETCH01", 1, True)
        assert await bus.drain(5)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")
        for i in range(20):
            bus.mes.create_lot(f"L{i}", "PO", "P-A", 25)
            bus.mes.alarm("ETCH01", 100 + i, True)
        await bus.durable()
        await eventually(lambda: "OOM" in caplog.text, what="loud error")
        assert "maxmemory" in caplog.text
        assert bus.relay.depth == 40
        r.config_set("maxmemory", "0")
        assert await bus.drain(10)
    r.close()
    lots = read_stream(own_redis.url, "fab:lots")
    equipment = read_stream(own_redis.url, "fab:equipment")
    assert [e["data"]["lot_id"] for e in lots] == [f"L{i}" for i in range(20)]
    assert [e["data"]["alid"] for e in equipment] == [1, *range(100, 120)]
    assert [e["seq"] for e in equipment] == list(range(1, 22))


def test_a_reply_cut_anywhere_is_read_whole_or_not_at_all() -> None:
    # TCP segments and TLS records cut replies anywhere: half a reply read as a whole one
    # would count a refused batch as published.
    from daemon.redis_conn import INCOMPLETE, ReplyError, parse_reply

    reason = b"WRONGTYPE Operation against a key holding the wrong kind of value"
    wire = b"*2\r\n:5\r\n$%d\r\n%s\r\n" % (len(reason), reason)
    for cut in range(len(wire)):
        assert parse_reply(bytearray(wire[:cut]), 0) == (INCOMPLETE, 0)
    assert parse_reply(bytearray(wire + b"*1\r\n:9\r\n"), 0) == ([5, reason], len(wire))
    error, end = parse_reply(bytearray(b"-NOSCRIPT No matching script.\r\n"), 0)
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT") and end == 31


def test_bench_quick_reports_the_contract_lines() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "bench", "bus", "--quick", "--json",
                          "--events", "5000"], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["metric"] for r in rows} == {"durable_publish_rate",
                                           "durable_publish_rate_vs_resp_packer",
                                           "relay_publish_rate"}
    for r in rows:
        assert set(r) == {"bench", "metric", "value", "unit", "baseline", "baseline_value",
                          "ratio"}
        assert r["value"] > 0 and r["baseline_value"] > 0 and r["unit"] == "events/s"


class TlsRedis(RedisServer):
    """redis-server speaking only TLS, with a self-signed certificate for 127.0.0.1."""

    def argv(self) -> list[str]:
        args = super().argv()
        i = args.index("--port")
        args[i + 1] = "0"  # no plaintext listener
        d = self.workdir
        return [*args, "--tls-port", str(self.port), "--tls-cert-file", str(d / "cert.pem"),
                "--tls-key-file", str(d / "key.pem"), "--tls-ca-cert-file", str(d / "cert.pem"),
                "--tls-auth-clients", "no"]


@pytest.fixture
def tls_redis() -> Iterator[TlsRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    workdir = new_workdir("redis-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(workdir / "key.pem"), "-out", str(workdir / "cert.pem"), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = TlsRedis(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


async def test_tls_with_a_ca_file_carries_events_and_commands(tls_redis, tmp_path) -> None:
    from daemon.bus import Bus
    from tests.daemon.bus_support import configs

    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    ca = str(tls_redis.workdir / "cert.pem")
    cfg = configs(url)
    cfg["redis"] = RedisConfig(url=url, tls_ca_file=ca, backoff_initial_s=0.05,
                               backoff_max_s=0.2)
    client = redis_sync.Redis.from_url(url, ssl_ca_certs=ca)
    client.xadd("fab:erp:commands", {"cmd": json.dumps(
        {"type": "define_tool", "command_id": "t1", "tool_id": "ETCH09", "tool_group": "ETCH"})})
    bus = Bus(state_dir=tmp_path, **cfg)
    await bus.start()
    tasks = [asyncio.create_task(c(), name=n) for n, c in (
        ("writer", bus.writer_loop), ("relay", bus.relay_loop), ("erp", bus.erp_loop))]
    try:
        await eventually(lambda: "ETCH09" in bus.mes.tools, what="command over TLS")
        bus.mes.alarm("ETCH09", 3, True, "door open")
        assert await bus.drain(10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
    entries = client.xrange("fab:equipment")
    client.close()
    assert [e[1][b"type"] for e in entries] == [b"alarm_set"]
