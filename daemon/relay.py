"""The relay: publishes the outbox (committed journal rows) to Redis streams in journal order.

Ordering. Batches of up to `relay_batch_events` rows go out as one Lua script
(`PUBLISH_SCRIPT`, by EVALSHA) that XADDs them in journal order and stops at
the first XADD Redis refuses (a key of the wrong type, OOM, ACL): the rows
before it are in Redis once, it and the rows after it are not, and Redis runs
the script as one unit, so no other client sees a half batch. The relay moves
its cursor past the rows Redis took and retries from the refused one after a
back-off; the next batch starts only after the previous one's reply came back.
So each stream receives its entries once each, in `seq` order, and no stream
runs ahead of the journal while another is refused. The only anomaly is a
re-send after a lost reply or a crash (XADDs done, cursor not yet stored),
which repeats entries with the same `eid` and `seq`. Consumers dedupe on `eid`.

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
import datetime as dt
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
    Script,
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


# KEYS: the stream of each row. ARGV: MAXLEN, v, then type, seq, eid, ts, data of each row.
# Returns {rows added} or {rows added before the refused one, Redis's error}. pcall, not
# call: with call a refused XADD raises out of the script, the ones before it stay (Redis
# does not roll back) and the error reply does not say how many there were.
PUBLISH_SCRIPT = Script("""
local maxlen, v, j = ARGV[1], ARGV[2], 3
for i = 1, #KEYS do
  local r = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'type', ARGV[j], 'v', v,
                        'seq', ARGV[j + 1], 'eid', ARGV[j + 2], 'ts', ARGV[j + 3],
                        'data', ARGV[j + 4])
  if type(r) == 'table' and r.err then
    return {i - 1, r.err}
  end
  j = j + 5
end
return {#KEYS}
""")


class Bulk(dict):
    """Cache of RESP bulk strings: self[s] is `prefix + s` encoded once."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, s: str) -> bytes:
        a = (self.prefix + s).encode()
        value = self[s] = b"$%d\r\n%s\r\n" % (len(a), a)
        return value


class Refused(ReplyError):
    """Redis refused a row (or the whole batch): `accepted` rows before it are published."""

    def __init__(self, accepted: int, key: str, reason: str) -> None:
        super().__init__(reason)
        self.accepted = accepted
        self.key = key  # the stream Redis refused, or "" when it refused the script itself
        self.reason = reason


class Publisher:
    """XADDs a batch of rows with PUBLISH_SCRIPT; constant parts are encoded once."""

    def __init__(self, prefix: str, maxlen: int) -> None:
        self.prefix = prefix
        self._keys = Bulk(f"{prefix}:")
        self._types = Bulk()
        self._head = Bulk()[str(maxlen)] + Bulk()[str(SCHEMA_VERSION)]  # ARGV[1], ARGV[2]

    def pack(self, rows: list[EventRow]) -> bytes:
        """Encode the script's numkeys, KEYS and ARGV for rows in RESP2."""
        n = b"%d" % len(rows)
        keys = self._keys
        types = self._types
        out = [b"$%d\r\n%s\r\n" % (len(n), n)]
        out += [keys[row[1]] for row in rows]
        out.append(self._head)
        ap = out.append
        for _jseq, _stream, seq, typ, eid, ts, data in rows:
            q = b"%d" % seq
            # eid and ts are ASCII: len(str) is their byte length
            ap(types[typ])
            ap(b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
               % (len(q), q, len(eid), eid.encode(), len(ts), ts.encode(), len(data), data))
        return b"".join(out)

    async def publish(self, conn: RespConnection, rows: list[EventRow]) -> None:
        """XADD rows in order, all or up to the first refused one; raise Refused then."""
        reply = await conn.run_script(PUBLISH_SCRIPT, 3 + 6 * len(rows), self.pack(rows))
        if isinstance(reply, ReplyError):  # the script did not run (NOPERM, BUSY, ...)
            raise Refused(0, "", str(reply))
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
            raise ReplyError(f"unexpected reply to the relay's script: {reply!r:.200}")
        if len(reply) > 1:
            k, reason = reply[0], reply[1]
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise Refused(k, f"{self.prefix}:{rows[k][1]}", str(reason))


def _log_refusal(exc: Refused, prefix: str) -> None:
    """One ERROR naming what Redis refused and what the operator does about it."""
    code = exc.reason.split(" ", 1)[0]
    if code == "WRONGTYPE":
        fix = f"{exc.key} is not a stream: rename or delete that key"
    elif code == "OOM":
        fix = "Redis is at maxmemory: raise it, or trim or free memory"
    elif code in ("NOPERM", "NOAUTH", "WRONGPASS"):
        fix = f"the relay's Redis user needs +xadd +evalsha +eval on ~{prefix}:*"
    else:
        fix = "check the Redis log, ACL, key types and maxmemory"
    if exc.key:
        log.error("relay: Redis refused the entry for %s (%s): it and every later entry wait, "
                  "in journal order; fix: %s - retrying", exc.key, exc.reason, fix)
    else:
        log.error("relay: Redis refused the relay's publish script (%s): every entry waits; "
                  "fix: %s - retrying", exc.reason, fix)


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
        self._publisher = Publisher(bus.prefix, bus.stream_maxlen)
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
        """XADD rows in journal order in one script; raise Refused at the first one refused."""
        await self._publisher.publish(conn, rows)

    def _published(self, rows: list[EventRow]) -> None:
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

    async def _date_backlog(self) -> None:
        """Date a backlog left by an earlier run (its commit times are not kept) by its
        oldest event's timestamp, so lag and depth show it from the start, not from the
        next commit."""
        if self.writer.committed_jseq > self.sent_jseq and not self._commit_times:
            rows = await self.store.call(self.store.read_events, self.sent_jseq, 1)
            age = 0.0
            if rows:
                try:
                    age = max(0.0, time.time() - dt.datetime.fromisoformat(rows[0][5]).timestamp())
                except ValueError:
                    pass
            self._commit_times.append((self.writer.committed_jseq, time.monotonic() - age))
        RELAY_LAG.set(self.lag_s())
        self._check_bound()

    async def run(self) -> None:
        """Publish until cancelled; survive Redis outages (the outbox grows on disk meanwhile)."""
        backoff = Backoff(self.redis_config.backoff_initial_s, self.redis_config.backoff_max_s)
        outage = Outage("relay", self.redis_config.url)
        client = RespConnection(self.redis_config)
        refused = False
        rows: list[EventRow] = []
        await self._date_backlog()
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
                    if isinstance(exc, Refused):
                        outage.up(time.monotonic())  # reachable, but refusing
                        if exc.accepted:
                            self._published(rows[:exc.accepted])
                            rows = rows[exc.accepted:]
                        if not refused:
                            refused = True
                            _log_refusal(exc, self.bus.prefix)
                    elif isinstance(exc, ReplyError):
                        if not refused:
                            refused = True
                            log.error("relay: %s; fix Redis (ACL, key types) - retrying", exc)
                    else:
                        outage.down(exc, time.monotonic())
                    RELAY_LAG.set(self.lag_s())
                    self._check_bound()
                    await asyncio.sleep(backoff.next())
                    continue  # the same rows again (from the refused one): same eid and seq
                if refused:
                    refused = False
                    log.info("relay: Redis accepts entries again")
                REDIS_UP.set(1)
                outage.up(time.monotonic())
                backoff.reset()
                self._published(rows)
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
