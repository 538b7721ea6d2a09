"""Bus: sustained publish rate through MES transitions + SQLite group commit + outbox + Redis, vs raw XADD.

Durable path: lot transitions on the MES state (create, track in, track out,
move) → one group-commit transaction per few ms (synchronous=FULL by default,
as in production) → the relay's publish script (one EVALSHA of XADDs per
batch). The clock stops when Redis has every event. Baseline (the contract's
ratio): the same entries (same streams, same fields) sent by a plain redis-py
pipelined XADD loop with the same batch size, in the same run, to the same
redis-server. A second line compares with the same entries sent as plain
pipelined XADDs packed the relay's way (RESP bytes, no redis-py): what
durability costs. A third times the relay's publish alone against that
pipeline: what stopping at the first refused XADD (the script) costs. Everything
runs on one event loop (one core), plus the SQLite thread, which holds the GIL
while it binds rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.common import emit, progress, standard_args
from daemon import events as ev
from daemon.bus import Bus
from daemon.busconfig import BusConfig, RedisConfig, StoreConfig
from daemon.redis_conn import RespConnection
from daemon.relay import Publisher
from daemon.store import EventRow

BENCH = "bus"


class _Redis:
    """A private redis-server on a free port (persistence off: we time fabd, not Redis disks)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fabd-bench-redis-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


STEPS = [ev.RouteStep(step_id=f"S{i:02d}", tool_group=f"G{i % 4}", recipe_id=f"R{i}",
                      recipe_version=1, process_time_s=60.0) for i in range(20)]


def _drive(bus: Bus, n_lots: int, chunk: int):
    """Yield after every `chunk` events: lots created, then stepped through the route."""
    mes = bus.mes
    for i in range(n_lots):
        mes.create_lot(f"L{i:06d}", "PO", "P", 25)
    yield
    lots = list(mes.lots.values())
    done = 0
    while any(lot.state == "queued" for lot in lots):
        for lot in lots:
            if lot.state != "queued":
                continue
            mes.track_in(lot.lot_id, "T1")
            mes.track_out(lot.lot_id, "T1")
            done += 3
            if done >= chunk:
                done = 0
                yield
    yield  # the last partial chunk


async def durable_path(url: str, n_events: int, state_dir: Path, batch: int,
                       synchronous: str) -> tuple[float, list]:
    """Return (events/s, the published rows) for n_events through the whole bus."""
    bus = Bus(redis=RedisConfig(url=url), store=StoreConfig(synchronous=synchronous),
              bus=BusConfig(relay_batch_events=batch, prefix="dur"), state_dir=state_dir)
    await bus.start()
    bus.mes.define_route("RT", STEPS)
    bus.mes.define_product("P", "RT")
    bus.mes.define_tool("T1", "G0")
    await bus.writer.commit_once()
    captured: list = []
    bus.writer.on_commit.append(captured.extend)
    tasks = [asyncio.create_task(bus.writer_loop(), name="bench.writer"),
             asyncio.create_task(bus.relay_loop(), name="bench.relay")]
    n_lots = max(10, n_events // 40)  # 61 events a lot: enough lots to produce n_events
    start_j = bus.mes.jseq
    gen = _drive(bus, n_lots, 500)
    t0 = time.perf_counter()
    while bus.mes.jseq - start_j < n_events:
        if next(gen, StopIteration) is StopIteration:
            break
        # Back-pressure like a real producer: do not run more than ~4 commits ahead.
        if bus.relay.depth + bus.mes.pending_events() > 20_000:
            await bus.durable()
            await bus.relay.wait_published(bus.writer.committed_jseq - 10_000)
        else:
            await asyncio.sleep(0)
    produced = bus.mes.jseq - start_j
    await bus.durable()
    await bus.relay.wait_published(bus.mes.jseq)
    elapsed = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await bus.close()
    return produced / elapsed, captured


class XaddHeads(dict):
    """Pre-encoded constant start of each (stream, type) XADD: key, MAXLEN ~ n, *, type, v."""

    def __init__(self, prefix: str, maxlen: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.maxlen = maxlen

    def __missing__(self, key: tuple[str, str]) -> bytes:
        stream, typ = key
        head = [b"XADD", f"{self.prefix}:{stream}".encode(), b"MAXLEN", b"~",
                str(self.maxlen).encode(), b"*", b"type", typ.encode(), b"v",
                str(ev.SCHEMA_VERSION).encode(), b"seq"]
        value = self[key] = b"*18\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in head)
        return value


def pack_xadds(rows: list[EventRow], heads: XaddHeads) -> bytes:
    """Encode plain XADDs of journal rows in RESP2, the relay's entries (the baseline's packer)."""
    out: list[bytes] = []
    ap = out.append
    for _jseq, stream, seq, typ, eid, ts, data in rows:
        q = b"%d" % seq
        ap(heads[(stream, typ)])
        ap(b"$%d\r\n%s\r\n$3\r\neid\r\n$%d\r\n%s\r\n$2\r\nts\r\n$%d\r\n%s\r\n"
           b"$4\r\ndata\r\n$%d\r\n%s\r\n"
           % (len(q), q, len(eid), eid.encode(), len(ts), ts.encode(), len(data), data))
    return b"".join(out)


async def raw_xadd(url: str, rows: list, batch: int, prefix: str = "raw") -> float:
    """Return events/s of a plain pipelined XADD loop, fabd's RESP packer, same entries."""
    conn = RespConnection(RedisConfig(url=url))
    heads = XaddHeads(prefix, 1_000_000)
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        errors = await conn.pipeline(pack_xadds(chunk, heads), len(chunk))
        assert not errors, errors
    elapsed = time.perf_counter() - t0
    await conn.close()
    return len(rows) / elapsed


async def relay_publish(url: str, rows: list, batch: int, prefix: str = "relay") -> float:
    """Return events/s of the relay's own publish (its script, batch after batch), same entries."""
    conn = RespConnection(RedisConfig(url=url))
    publisher = Publisher(prefix, 1_000_000)
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        await publisher.publish(conn, rows[i:i + batch])
    elapsed = time.perf_counter() - t0
    await conn.close()
    return len(rows) / elapsed


async def packer_and_relay(url: str, rows: list, batch: int, rounds: int) -> tuple[float, float]:
    """Return the best events/s of the pipelined packer and of the relay's publish, alternated."""
    raw = relay = 0.0
    for i in range(rounds):
        raw = max(raw, await raw_xadd(url, rows, batch, f"raw{i}"))
        relay = max(relay, await relay_publish(url, rows, batch, f"relay{i}"))
    return raw, relay


async def redis_py_xadd(url: str, rows: list, batch: int) -> float:
    """Return events/s of the textbook redis-py pipelined XADD loop over the same entries."""
    client = aioredis.Redis.from_url(url)
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        pipe = client.pipeline(transaction=False)
        for _jseq, stream, seq, typ, eid, ts, data in rows[i:i + batch]:
            pipe.xadd(f"raw:{stream}", {"type": typ, "v": 1, "seq": seq, "eid": eid, "ts": ts,
                                        "data": data}, maxlen=1_000_000, approximate=True)
        await pipe.execute()
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return len(rows) / elapsed


def main(argv: list[str] | None = None) -> int:
    def extra(p):
        p.add_argument("--events", type=int, default=0, help="events per run (default 200k)")
        p.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])

    args = standard_args(BENCH, argv, extra)
    n = args.events or (20_000 if args.quick else 200_000)
    batch = BusConfig().relay_batch_events
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - optional on non-Linux
        runner = asyncio.run
    server = _Redis()
    state = Path(tempfile.mkdtemp(prefix="fabd-bench-bus-"))
    try:
        progress(f"durable path: {n} events (MES + SQLite {args.synchronous} + relay)")
        rate, rows = runner(durable_path(server.url, n, state, batch, args.synchronous))
        progress(f"baseline: plain pipelined XADD of the same {len(rows)} entries, and the "
                 f"relay's publish script alone (best of 3 each, alternated)")
        raw, relay = runner(packer_and_relay(server.url, rows, batch, 3))
        progress("context: the same entries through a redis-py pipeline")
        rpy = runner(redis_py_xadd(server.url, rows, batch))
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    # The contract's ratio: the durable path (MES + SQLite + outbox + relay) against the plain
    # pipelined XADD loop anyone would write with redis-py, same entries, same batch size.
    emit(BENCH, "durable_publish_rate", rate, "events/s", "plain_pipelined_xadd_redis_py", rpy,
         as_json=args.json)
    # Stricter: against the same entries sent with the relay's own RESP packer and nothing else,
    # i.e. what durability alone costs. Python transitions + SQLite keep this well below 1.
    emit(BENCH, "durable_publish_rate_vs_resp_packer", rate, "events/s",
         "pipelined_xadd_resp_packer", raw, as_json=args.json)
    # The relay's publish (one script per batch that stops at the first refused XADD, so no
    # entry is appended twice or out of order) against the pipeline that cannot stop: below 1.
    emit(BENCH, "relay_publish_rate", relay, "events/s", "pipelined_xadd_resp_packer", raw,
         as_json=args.json)
    return 0
