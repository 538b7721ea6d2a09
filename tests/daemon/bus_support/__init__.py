"""Helpers for the bus tests: a running Bus against a real redis-server, and stream readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import redis as redis_sync

from daemon import events as ev
from daemon.bus import Bus
from daemon.busconfig import BusConfig, RedisConfig, StoreConfig

STEPS = [ev.RouteStep(step_id=f"S{i}", tool_group="ETCH" if i % 2 else "LITHO",
                      recipe_id=f"R{i}", recipe_version=1, process_time_s=60.0)
         for i in range(3)]


def configs(url: str, store_kw: dict | None = None, redis_kw: dict | None = None,
            **bus_kw) -> dict:
    """Configs for a test bus: fast commits, fast backoff."""
    return dict(redis=RedisConfig(**{"url": url, "backoff_initial_s": 0.05, "backoff_max_s": 0.2,
                                     "connect_timeout_s": 1.0, "command_timeout_s": 2.0,
                                     **(redis_kw or {})}),
                store=StoreConfig(**{"commit_interval_ms": 2.0, "synchronous": "NORMAL",
                                     **(store_kw or {})}),
                bus=BusConfig(erp_block_ms=50, **bus_kw))


@contextlib.asynccontextmanager
async def running_bus(url: str, state_dir: Path, *, erp: bool = True,
                      store_kw: dict | None = None, redis_kw: dict | None = None,
                      **bus_kw) -> AsyncIterator[Bus]:
    """Start a Bus with its loops as tasks; stop it cleanly at the end."""
    bus = Bus(state_dir=state_dir, **configs(url, store_kw, redis_kw, **bus_kw))
    await bus.start()
    tasks = [asyncio.create_task(bus.writer_loop(), name="writer"),
             asyncio.create_task(bus.relay_loop(), name="relay"),
             asyncio.create_task(bus.snapshot_loop(), name="snapshot")]
    if erp:
        tasks.append(asyncio.create_task(bus.erp_loop(), name="erp"))
    try:
        yield bus
    finally:
        await stop_tasks(tasks)
        await bus.close()


async def stop_tasks(tasks: list[asyncio.Task], *, failed_ok: bool = False) -> None:
    """Cancel the tasks and wait for them (`failed_ok`: one that crashed is not re-raised)."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, *((Exception,) if failed_ok else ())):
            await t


def define_master_data(bus: Bus) -> None:
    """A route of three steps, a product on it, approved recipes, two qualified tools."""
    bus.mes.define_route("RT-A", STEPS)
    bus.mes.define_product("P-A", "RT-A")
    for i in range(3):
        bus.mes.approve_recipe(f"R{i}", 1, f"{i:064x}")
    for tool, group in (("ETCH01", "ETCH"), ("LITHO01", "LITHO")):
        bus.mes.define_tool(tool, group)


def read_stream_raw(url: str, key: str) -> list[dict]:
    """Every entry of a stream as its fields, as Redis holds them (e.g. the dead letters)."""
    r = redis_sync.Redis.from_url(url, decode_responses=True)
    try:
        return [fields for _id, fields in r.xrange(key)]
    finally:
        r.close()


def read_stream(url: str, key: str) -> list[dict]:
    """Every entry of a stream as a dict of str fields (data decoded from JSON)."""
    r = redis_sync.Redis.from_url(url, decode_responses=True)
    try:
        out = []
        for entry_id, fields in r.xrange(key):
            fields = dict(fields, id=entry_id, seq=int(fields["seq"]))
            fields["data"] = json.loads(fields["data"])
            out.append(fields)
        return out
    finally:
        r.close()


def assert_in_order_once(entries: list[dict]) -> list[dict]:
    """Dedupe by eid (the consumer's rule) and check seq is 1..N in stream order."""
    seen: dict[str, dict] = {}
    unique = []
    for e in entries:
        if e["eid"] in seen:
            first = seen[e["eid"]]
            assert (first["seq"], first["data"]) == (e["seq"], e["data"]), "re-send changed"
            continue
        seen[e["eid"]] = e
        unique.append(e)
    assert [e["seq"] for e in unique] == list(range(1, len(unique) + 1))
    return unique


def send_commands(url: str, prefix: str, commands: list) -> list[str]:
    """XADD commands (dicts, structs or raw strings) to <prefix>:erp:commands."""
    import msgspec

    r = redis_sync.Redis.from_url(url)
    try:
        ids = []
        for cmd in commands:
            if isinstance(cmd, dict) and "__fields__" in cmd:
                fields = cmd["__fields__"]
            elif isinstance(cmd, str | bytes):
                fields = {"cmd": cmd}
            elif isinstance(cmd, dict):
                fields = {"cmd": json.dumps(cmd)}
            else:
                fields = {"cmd": msgspec.json.encode(cmd)}
            ids.append(r.xadd(f"{prefix}:erp:commands", fields))
        return ids
    finally:
        r.close()
