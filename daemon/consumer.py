"""`fabd consume`: the reference ERP consumer of fabd's streams. Copy it.

What a correct consumer of fabd does, in order, for each entry it reads:

1. Read with a consumer group (XREADGROUP), so a restart resumes where it
   stopped and an entry it crashed on is delivered again (it stays pending
   until XACK).
2. Dedupe on `eid`. Delivery is at least once: after a Redis outage or a fabd
   crash an entry can come twice, always with the same `eid` and `seq`.
3. Check `seq`: it counts the entries of ONE stream, 1, 2, 3, ... A jump is a
   gap (entries lost, e.g. trimmed by MAXLEN before you read them); say so.
4. Apply the event to your own records (here: WIP per product and step).
5. XACK. A real integrator commits its own records and the last `eid`/`seq`
   in one transaction before acknowledging, so a crash in between re-applies
   nothing (step 2 catches the re-delivery).
6. With `--check-wip`, compare the own WIP with every `<prefix>:wip` snapshot
   at exactly the `lots_seq` the snapshot covers. A consumer that starts in the
   middle of the stream has no WIP of its own yet: it adopts the first snapshot
   it can line up as its baseline, then checks every later one.
7. Skip, with a warning, an entry whose `v` is newer than the schema this consumer
   knows (its fields may mean something else); the WIP then resyncs at the next snapshot.

Output is one readable line per finding (and per entry with --verbose), or
JSON objects with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable

from daemon.events import SCHEMA_VERSION
from daemon.redis_conn import REDIS_DOWN, Backoff

# Lot event types that move lots in or out of a (product, step) WIP bucket.
_ENTER = ("lot_created",)
_MOVE = ("lot_moved", "lot_reworked")
_LEAVE = ("lot_completed", "lot_scrapped")
_SHRINK = ("wafers_scrapped",)   # the lot stays; `scrapped` of its wafers leave the WIP
_SPLIT = ("lot_split",)   # one more lot at the step, the same wafers
_MERGE = ("lot_merged",)  # one lot fewer at the step, the same wafers


class WipBook:
    """The consumer's own WIP: lots and wafers per (product, step), kept from lot events."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def apply(self, etype: str, data: dict) -> None:
        """Apply one lot event."""
        product, wafers = data.get("product_id", ""), int(data.get("wafers", 0))
        if etype in _ENTER:
            self._add(product, data["step_id"], 1, wafers)
        elif etype in _MOVE:
            self._add(product, data["from_step_id"], -1, -wafers)
            self._add(product, data["step_id"], 1, wafers)
        elif etype in _LEAVE:
            self._add(product, data["step_id"], -1, -wafers)
        elif etype in _SHRINK:
            self._add(product, data["step_id"], 0, -int(data["scrapped"]))
        elif etype in _SPLIT:
            self._add(product, data["step_id"], 1, 0)
        elif etype in _MERGE:
            self._add(product, data["step_id"], -1, 0)

    def _add(self, product: str, step: str, lots: int, wafers: int) -> None:
        c = self.counts[(product, step)]
        c[0] += lots
        c[1] += wafers
        if c == [0, 0]:
            del self.counts[(product, step)]

    def adopt(self, snapshot: dict) -> None:
        """Replace the book with a snapshot's counts (baseline for a consumer that starts late)."""
        self.counts.clear()
        for c in snapshot["counts"]:
            self.counts[(c["product_id"], c["step_id"])] = [c["lots"], c["wafers"]]

    def diff(self, snapshot: dict) -> list[str]:
        """Return readable differences against a snapshot (empty when they agree)."""
        theirs = {(c["product_id"], c["step_id"]): [c["lots"], c["wafers"]]
                  for c in snapshot["counts"]}
        out = []
        for key in sorted(set(theirs) | set(self.counts)):
            mine = self.counts.get(key, [0, 0])
            other = theirs.get(key, [0, 0])
            if mine != other:
                out.append(f"{key[0]}/{key[1]}: consumer {mine[0]} lots {mine[1]} wafers, "
                           f"snapshot {other[0]} lots {other[1]} wafers")
        return out


class ReferenceConsumer:
    """Dedupe, gap detection and WIP reconciliation over one lots stream (and its wip stream)."""

    def __init__(self, stream: str, *, check_wip: bool = False,
                 report: Callable[[dict], None] = print, verbose: bool = False,
                 dedupe_window: int = 100_000) -> None:
        self.stream = stream
        self.wip_stream = stream.rsplit(":", 1)[0] + ":wip" if check_wip else None
        self.report = report
        self.verbose = verbose
        self.last_seq = 0  # highest seq applied from `stream`
        self.seen: OrderedDict[str, None] = OrderedDict()  # recent eids (bounded)
        self.dedupe_window = dedupe_window
        self.book = WipBook()
        self.synced = False  # True once the book is trustworthy (seq 1 seen, or a baseline)
        self.pending_snapshots: list[dict] = []
        self.applied = self.duplicates = self.gaps = self.malformed = 0
        self.snapshots_ok = self.snapshots_bad = 0
        self._idle_since = time.monotonic()   # last entry read (idle_exit_s)
        self._down_since: float | None = None  # start of a Redis outage
        self._backoff = Backoff(0.2, 5.0)

    def _say(self, kind: str, text: str, **extra) -> None:
        self.report({"kind": kind, "stream": self.stream, "text": text, **extra})

    def _fresh(self, eid: str) -> bool:
        if eid in self.seen:
            return False
        self.seen[eid] = None
        if len(self.seen) > self.dedupe_window:
            self.seen.popitem(last=False)
        return True

    def _malformed(self, what: str, exc: Exception, **extra) -> None:
        # An entry that breaks the contract: say which and why, skip it, and do not trust the
        # book until a snapshot lines up (the entry may have moved WIP). Never a crash: the
        # entry would be read again, and crash again, on every restart.
        self.malformed += 1
        self.synced = False
        self._say("malformed", f"{what}: {type(exc).__name__}: {exc}: skipped; WIP syncs at "
                  "the next snapshot", **extra)

    def on_snapshot(self, fields: dict) -> None:
        """Queue a WIP snapshot; it is checked when the lots stream reaches its lots_seq."""
        try:
            if not self._fresh(fields["eid"]):
                return
            if int(fields.get("v", 1)) > SCHEMA_VERSION or fields.get("type") != "wip_snapshot":
                self._say("unsupported_version", f"{self.wip_stream} entry {fields.get('type')} "
                          f"v{fields.get('v')}: this consumer knows wip_snapshot "
                          f"v{SCHEMA_VERSION}: skipped")
                return
            snap = json.loads(fields["data"])
            int(snap["lots_seq"]), list(snap["counts"])
        except (KeyError, TypeError, ValueError) as exc:
            self._malformed(f"{self.wip_stream} entry", exc)
            return
        if snap["lots_seq"] < self.last_seq:
            # Only possible before the first line-up (we started reading mid-stream).
            self._say("snapshot_skipped", f"snapshot covers lots seq {snap['lots_seq']}, "
                      f"consumer is at {self.last_seq}: cannot line up", lots_seq=snap["lots_seq"])
            return
        self.pending_snapshots.append(snap)
        self._check_snapshots()

    def on_lot_entry(self, entry_id: str, fields: dict) -> None:
        """Dedupe, check seq, apply one lots entry."""
        try:
            eid, seq, etype = fields["eid"], int(fields["seq"]), fields["type"]
        except (KeyError, ValueError) as exc:   # no seq to place it by: the next one is a gap
            self._malformed(f"{self.stream} entry {entry_id}", exc, entry_id=entry_id)
            return
        if not self._fresh(eid):
            self.duplicates += 1
            self._say("duplicate", f"seq {seq} eid {eid} delivered again: ignored", seq=seq)
            return
        if self.last_seq == 0 and seq != 1:
            self._say("late_start", f"first entry has seq {seq}: earlier entries were trimmed "
                      "or read by another consumer; WIP syncs at the next snapshot", seq=seq)
            self._resync(seq)
        elif seq != self.last_seq + 1 and self.last_seq:
            if seq <= self.last_seq:
                self._say("seq_reset", f"seq went back from {self.last_seq} to {seq} with a new "
                          f"eid {eid}: was the daemon's store replaced?", seq=seq)
            else:
                self.gaps += 1
                self._say("gap", f"expected seq {self.last_seq + 1}, got {seq}: "
                          f"{seq - self.last_seq - 1} entries missing", seq=seq)
            self._resync(seq)
        elif seq == 1:
            self.synced = True
        self._check_snapshots()  # a snapshot covering exactly last_seq, before applying seq
        try:
            v = int(fields.get("v", 1))
        except ValueError as exc:
            self._malformed(f"seq {seq} {etype}", exc, seq=seq)
            self.last_seq = seq
            self._check_snapshots()
            return
        if v > SCHEMA_VERSION:
            # A newer daemon: its fields may mean something else. Skip the entry; it may
            # have moved WIP, so the book is untrusted until the next snapshot lines up.
            self._say("unsupported_version", f"seq {seq} {etype} has schema version "
                      f"{fields['v']}, this consumer knows {SCHEMA_VERSION}: skipped", seq=seq)
            self.synced = False
            self.last_seq = seq
            self._check_snapshots()
            return
        try:
            data = json.loads(fields["data"])
            self.book.apply(etype, data)
        except (KeyError, TypeError, ValueError) as exc:
            self._malformed(f"seq {seq} {etype}", exc, seq=seq)
            self.last_seq = seq
            self._check_snapshots()
            return
        self.last_seq = seq
        self.applied += 1
        if self.verbose:
            self._say("event", f"seq {seq} {etype} {data.get('lot_id', '')} "
                      f"@{data.get('step_id', '')}", seq=seq, entry_id=entry_id)
        self._check_snapshots()

    def _resync(self, seq: int) -> None:
        # Nothing before `seq` was applied in order: the book is untrusted until a snapshot
        # lines up, and one covering exactly seq - 1 is the first that can.
        self.synced = False
        self.last_seq = seq - 1

    def _check_snapshots(self) -> None:
        while self.pending_snapshots and self.pending_snapshots[0]["lots_seq"] <= self.last_seq:
            snap = self.pending_snapshots.pop(0)
            at = snap["lots_seq"]
            if at < self.last_seq:
                self._say("snapshot_skipped", f"snapshot at lots seq {at} passed", lots_seq=at)
                continue
            if not self.synced:
                self.book.adopt(snap)
                self.synced = True
                self._say("wip_baseline", f"WIP baseline from snapshot at lots seq {at}: "
                          f"{snap['total_lots']} lots {snap['total_wafers']} wafers", lots_seq=at)
                continue
            diff = self.book.diff(snap)
            if diff:
                self.snapshots_bad += 1
                self._say("wip_mismatch", f"WIP differs at lots seq {at}: " + "; ".join(diff),
                          lots_seq=at, differences=diff)
            else:
                self.snapshots_ok += 1
                self._say("wip_ok", f"WIP matches snapshot at lots seq {at}: "
                          f"{snap['total_lots']} lots {snap['total_wafers']} wafers", lots_seq=at)

    def on_response(self, resp: list) -> None:
        """Handle one XREADGROUP response: snapshots first, so each lines up before later lots."""
        # An entry with no fields was deleted (trimmed) while pending, before a restart: it
        # is gone, not malformed; the next entry's seq tells what is missing.
        by_stream = {_s(name): entries for name, entries in resp}
        for _entry_id, fields in by_stream.get(self.wip_stream, []) if self.wip_stream else []:
            if fields:
                self.on_snapshot(_fields(fields))
        for entry_id, fields in by_stream.get(self.stream, []):
            if fields:
                self.on_lot_entry(_s(entry_id), _fields(fields))

    async def run(self, client, group: str, consumer: str, *, count: int = 500,
                  block_ms: int = 1000, idle_exit_s: float | None = None,
                  retry_max_s: float = 5.0) -> None:
        """Read, apply and acknowledge until cancelled (or idle for idle_exit_s).

        A Redis outage is reported once (kind redis_down) and retried with backoff; once
        Redis answers again (redis_up) the consumer reads its own unacknowledged entries
        first, as after a restart (those it had applied count as duplicates).
        """
        streams = [self.stream] + ([self.wip_stream] if self.wip_stream else [])
        self._backoff = Backoff(0.2, retry_max_s)
        self._idle_since = time.monotonic()
        while True:
            try:
                await self._read(client, group, consumer, streams, count, block_ms, idle_exit_s)
                return
            except REDIS_DOWN as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self._say("redis_down", f"Redis unreachable ({exc.__class__.__name__}: "
                                            f"{exc}); retrying, nothing is lost: entries "
                                            "not acknowledged are read again")
                if idle_exit_s is not None and time.monotonic() - self._idle_since >= idle_exit_s:
                    return
                await asyncio.sleep(self._backoff.next())

    def _answered(self) -> None:
        """Redis answered: the end of an outage, if there was one."""
        if self._down_since is not None:
            self._say("redis_up", f"Redis reachable again after "
                                  f"{time.monotonic() - self._down_since:.1f} s")
            self._down_since = None
            self._backoff.reset()

    async def _read(self, client, group: str, consumer: str, streams: list[str], count: int,
                    block_ms: int, idle_exit_s: float | None) -> None:
        for key in streams:
            try:
                await client.xgroup_create(key, group, id="0", mkstream=True)
            except REDIS_DOWN:
                raise
            except Exception as exc:  # BUSYGROUP: the group exists; resume where it stopped
                if "BUSYGROUP" not in str(exc):
                    raise
        self._answered()
        # Our own pending entries first (read but not acknowledged before a crash or an
        # outage), then new ones.
        ids = dict.fromkeys(streams, "0")
        while True:
            resp = await client.xreadgroup(group, consumer, ids, count=count, block=block_ms)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # Python 3.11: redis-py can swallow a cancel
                raise asyncio.CancelledError
            got = any(entries for _name, entries in resp or [])
            if not got and "0" in ids.values():
                ids = dict.fromkeys(streams, ">")
                continue
            if got:
                self._idle_since = time.monotonic()
                self.on_response(resp)
                for name, entries in resp:
                    if entries:
                        await client.xack(name, group, *[e[0] for e in entries])
            elif idle_exit_s is not None and time.monotonic() - self._idle_since >= idle_exit_s:
                return


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _fields(fields: dict) -> dict:
    return {_s(k): _s(v) for k, v in fields.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", default="fab:lots", help="the lots stream (default fab:lots)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis URL (password: env FABD_REDIS_PASSWORD, never on the line)")
    parser.add_argument("--group", default="erp-reference", help="consumer group name")
    parser.add_argument("--consumer", default="consume-1", help="consumer name in the group")
    parser.add_argument("--check-wip", action="store_true",
                        help="also read <prefix>:wip and check the own WIP against each snapshot")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--verbose", action="store_true", help="a line for every entry too")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="exit after this long without new entries (default: run forever)")


def run(args: argparse.Namespace) -> int:
    import os

    import redis.asyncio as aioredis

    def report(row: dict) -> None:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['kind']:<16} {row['text']}", flush=True)

    consumer = ReferenceConsumer(args.stream, check_wip=args.check_wip, report=report,
                                 verbose=args.verbose)

    async def main() -> None:
        client = aioredis.Redis.from_url(args.redis_url,
                                         password=os.environ.get("FABD_REDIS_PASSWORD") or None)
        try:
            await consumer.run(client, args.group, args.consumer, idle_exit_s=args.idle_exit)
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    summary = {"kind": "summary", "stream": args.stream, "applied": consumer.applied,
               "duplicates": consumer.duplicates, "gaps": consumer.gaps,
               "wip_ok": consumer.snapshots_ok, "wip_mismatch": consumer.snapshots_bad,
               "malformed": consumer.malformed,
               "text": f"{consumer.applied} applied, {consumer.duplicates} duplicates, "
                       f"{consumer.gaps} gaps, {consumer.malformed} malformed, WIP "
                       f"{consumer.snapshots_ok} ok / {consumer.snapshots_bad} mismatched"}
    report(summary)
    return 1 if consumer.gaps or consumer.snapshots_bad or consumer.malformed else 0
