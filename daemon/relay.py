"""The relay: publishes the outbox (committed journal rows) to Redis streams in journal order.

Ordering. Batches of up to `relay_batch_events` rows go out as one pipeline of
XADDs on one connection (no MULTI: a pipeline on one connection is already
executed by Redis in the order sent). The next batch starts only after every
reply of the previous one came back, and a failed batch is sent again whole.
So each stream receives its entries in `seq` order; the only anomaly is a
re-send after a failure or a crash (XADD done, cursor not yet stored), which
repeats entries with the same `eid` and `seq`. Consumers dedupe on `eid`.

Where rows come from. Right after a commit the writer hands the new rows to
the relay in memory (no read-back). After a restart, or when the memory feed
overflowed during a long Redis outage, the relay reads the rows after its
cursor from the store instead; the outbox on disk is the truth either way.

The bound. `outbox_max_events` unsent events is a soft bound: above
`outbox_warn_fraction` of it one WARNING is logged and `fabd_outbox_depth_events`
shows it; at the bound the ERP intake stops taking commands (they wait in
Redis) but tool events are still accepted and kept: an event acknowledged to a
tool is never dropped, the disk is the limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from prometheus_client import Counter, Gauge

from daemon.busconfig import BusConfig, RedisConfig, StoreConfig
from daemon.cancel import raise_if_cancelled
from daemon.events import SCHEMA_VERSION
from daemon.redis_conn import (
    REDIS_DOWN,
    Backoff,
    Outage,
    ReplyError,
    RespConnection,
)
from daemon.store import EventRow, Store
from daemon.writer import Writer

log = logging.getLogger(__name__)

PUBLISHED = Counter("fabd_bus_events_published_total", "Events published to Redis",
                    ["stream"])
OUTBOX_DEPTH = Gauge("fabd_outbox_depth_events", "Committed events not yet published to Redis")
OUTBOX_LIMIT = Gauge("fabd_outbox_limit_events", "Configured bound of the outbox")
RELAY_LAG = Gauge("fabd_relay_lag_seconds",
                  "Age of the oldest committed event not yet published (0 when caught up)")
REDIS_UP = Gauge("fabd_redis_up", "1 when the relay's last Redis call succeeded")


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
                str(SCHEMA_VERSION).encode(), b"seq"]
        value = self[key] = b"*18\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in head)
        return value


def xadd_heads(prefix: str, maxlen: int) -> XaddHeads:
    """Return the cache of pre-encoded XADD heads for a stream prefix."""
    return XaddHeads(prefix, maxlen)


def pack_xadds(rows: list[EventRow], heads: XaddHeads) -> bytes:
    """Encode the XADDs of journal rows in RESP2 (fields type, v, seq, eid, ts, data)."""
    out: list[bytes] = []
    ap = out.append
    for _jseq, stream, seq, typ, eid, ts, data in rows:
        q = b"%d" % seq
        # eid and ts are ASCII: len(str) is their byte length
        ap(heads[(stream, typ)])
        ap(b"$%d\r\n%s\r\n$3\r\neid\r\n$%d\r\n%s\r\n$2\r\nts\r\n$%d\r\n%s\r\n"
           b"$4\r\ndata\r\n$%d\r\n%s\r\n"
           % (len(q), q, len(eid), eid.encode(), len(ts), ts.encode(), len(data), data))
    return b"".join(out)


class Relay:
    """Publishes committed events to `<prefix>:<stream>` in journal order, at least once."""

    def __init__(self, bus: BusConfig, redis: RedisConfig, store_config: StoreConfig,
                 store: Store, writer: Writer) -> None:
        self.bus = bus
        self.redis_config = redis
        self.store_config = store_config
        self.store = store
        self.writer = writer
        self.sent_jseq = writer.sent_jseq
        self._memory: deque[EventRow] = deque()
        self._commit_times: deque[tuple[int, float]] = deque()  # (last jseq of a commit, time)
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set after each published batch
        self._warned = False
        self._client = None
        self._heads = xadd_heads(bus.prefix, bus.stream_maxlen)
        writer.on_commit.append(self._committed)
        OUTBOX_LIMIT.set(store_config.outbox_max_events)

    def _committed(self, rows: list[EventRow]) -> None:
        self._memory.extend(rows)
        excess = len(self._memory) - self.bus.relay_memory_events
        for _ in range(max(0, excess)):  # still on disk: the relay reads it back from the store
            self._memory.popleft()
        now = time.monotonic()
        times = self._commit_times
        if times and now - times[-1][1] < 0.5:  # bounded during long outages: 2 entries a second
            times[-1] = (rows[-1][0], times[-1][1])
        else:
            times.append((rows[-1][0], now))
        self._wake.set()
        self._check_bound()

    @property
    def depth(self) -> int:
        """Committed events not yet published."""
        return self.writer.committed_jseq - self.sent_jseq

    @property
    def full(self) -> bool:
        """True when the outbox reached its bound (the ERP intake pauses)."""
        return self.depth >= self.store_config.outbox_max_events

    def lag_s(self) -> float:
        """Seconds since the oldest unpublished event was committed."""
        while self._commit_times and self._commit_times[0][0] <= self.sent_jseq:
            self._commit_times.popleft()
        return time.monotonic() - self._commit_times[0][1] if self._commit_times else 0.0

    def _check_bound(self) -> None:
        depth = self.depth
        OUTBOX_DEPTH.set(depth)
        limit = self.store_config.outbox_max_events
        if not self._warned and depth >= limit * self.store_config.outbox_warn_fraction:
            self._warned = True
            log.warning("outbox holds %d unpublished events (bound %d): Redis is not taking "
                        "them; at the bound ERP commands pause, tool events are still kept",
                        depth, limit)
        elif self._warned and depth < limit * self.store_config.outbox_warn_fraction / 2:
            self._warned = False
            log.info("outbox back to %d unpublished events", depth)

    async def _next_rows(self) -> list[EventRow]:
        mem = self._memory
        while mem and mem[0][0] <= self.sent_jseq:
            mem.popleft()
        n = self.bus.relay_batch_events
        if mem and mem[0][0] == self.sent_jseq + 1:
            return [mem.popleft() for _ in range(min(n, len(mem)))]
        if self.writer.committed_jseq > self.sent_jseq:
            return await self.store.call(self.store.read_events, self.sent_jseq, n)
        return []

    async def publish(self, conn: RespConnection, rows: list[EventRow]) -> None:
        """XADD rows in one pipeline (ordered, no MULTI); raise if Redis refused any of them."""
        errors = await conn.pipeline(pack_xadds(rows, self._heads), len(rows))
        if errors:
            raise ReplyError(f"Redis refused {len(errors)} of {len(rows)} XADDs: {errors[0]}")

    async def run(self) -> None:
        """Publish until cancelled; survive Redis outages (the outbox grows on disk meanwhile)."""
        backoff = Backoff(self.redis_config.backoff_initial_s, self.redis_config.backoff_max_s)
        outage = Outage("relay", self.redis_config.url)
        client = RespConnection(self.redis_config)
        refused = False
        rows: list[EventRow] = []
        try:
            while True:
                raise_if_cancelled()
                if not rows:
                    rows = await self._next_rows()
                if not rows:
                    RELAY_LAG.set(0.0)
                    self._wake.clear()
                    if self.writer.committed_jseq <= self.sent_jseq:
                        await self._wake.wait()
                    continue
                try:
                    await self.publish(client, rows)
                except (*REDIS_DOWN, ReplyError) as exc:
                    REDIS_UP.set(0)
                    if isinstance(exc, ReplyError):
                        if not refused:  # reachable but refusing: a config or ACL problem
                            refused = True
                            log.error("relay: %s; fix Redis (ACL, key types) - retrying", exc)
                    else:
                        outage.down(exc, time.monotonic())
                    RELAY_LAG.set(self.lag_s())
                    self._check_bound()
                    await asyncio.sleep(backoff.next())
                    continue  # the same rows again: same eid and seq
                if refused:
                    refused = False
                    log.info("relay: Redis accepts entries again")
                REDIS_UP.set(1)
                outage.up(time.monotonic())
                backoff.reset()
                counts: dict[str, int] = {}
                for row in rows:
                    counts[row[1]] = counts.get(row[1], 0) + 1
                for stream, n in counts.items():
                    PUBLISHED.labels(stream).inc(n)
                self.sent_jseq = rows[-1][0]
                self.writer.mark_sent(self.sent_jseq)
                self._progress.set()
                self._progress.clear()
                RELAY_LAG.set(self.lag_s())
                self._check_bound()
                rows = []
        finally:
            await client.close()

    async def wait_published(self, jseq: int) -> None:
        """Return once every event up to journal seq `jseq` is in Redis."""
        while self.sent_jseq < jseq:
            await self._progress.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything committed is published (at stop); False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.wait_published(self.writer.committed_jseq)
        except TimeoutError:
            return False
        return True
