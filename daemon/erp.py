"""ERP command intake: `<prefix>:erp:commands` read with consumer group `fabd`, validated, applied once.

For each entry, in stream order:
1. decode the `cmd` field into one of the command structs (daemon.events);
2. apply it to the MES state (a duplicate `command_id` is acknowledged and
   changes nothing);
3. wait until the change is durable in the store, then XACK.
An invalid entry (bad JSON, unknown type, missing or wrong field, unknown lot
or route, illegal transition) is copied to `<prefix>:erp:dead` with the
original fields, a reason code and a readable reason, then acknowledged; it
changes nothing. An entry the state refused (unknown lot, illegal transition)
is remembered in the store with the batch, so a re-delivery is dead-lettered
again with the same reason rather than judged against a later state. On start
the consumer first re-reads its own pending entries (a crash between apply and
XACK), then claims entries another consumer left pending for
`erp_claim_idle_s`, then reads new ones. A crash between the dead-letter XADD
and the XACK can repeat a dead letter; never an apply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

import msgspec
from prometheus_client import Counter
from redis.exceptions import ResponseError

from daemon import events as ev
from daemon.busconfig import BusConfig, RedisConfig
from daemon.cancel import raise_if_cancelled
from daemon.mes import MesError, MesState
from daemon.redis_conn import REDIS_DOWN, Backoff, Outage, ReplyError, make_client
from daemon.relay import Relay
from daemon.writer import Writer

log = logging.getLogger(__name__)

COMMANDS = Counter("fabd_erp_commands_total", "ERP commands by result", ["result"])
DEAD_LETTERS = Counter("fabd_erp_dead_letters_total", "ERP commands dead-lettered by reason",
                       ["reason"])


class Rejected(Exception):
    """An entry that goes to the dead-letter stream: code (metric label) and readable reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def classify_decode_error(exc: Exception) -> Rejected:
    """Turn a msgspec error into a dead-letter code and a readable reason."""
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if "at `$.type`" in msg and msg.startswith("Invalid value"):
            return Rejected("unknown_type", f"unknown command type ({msg}); known: "
                            + ", ".join(t.__struct_config__.tag for t in ev.COMMANDS))
        if "missing required field" in msg:
            return Rejected("missing_field", msg)
        if "unknown field" in msg:
            return Rejected("unknown_field", msg)
        return Rejected("invalid_field", msg)
    return Rejected("bad_json", f"not valid JSON: {msg}")


def _cmd_field(fields: dict) -> bytes | str | None:
    """An entry's `cmd` field, whether the client decoded responses or not."""
    return fields.get(b"cmd", fields.get("cmd"))


def _digest(fields: dict) -> str:
    """Fingerprint of an entry's `cmd` (an entry id Redis reuses after losing the stream differs)."""
    raw = _cmd_field(fields)
    raw = raw if isinstance(raw, bytes) else str(raw).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def decode_entry(fields: dict) -> ev.Command:
    """Decode a stream entry's fields into a command; raise Rejected when it is not one."""
    raw = _cmd_field(fields)
    if raw is None:
        names = ", ".join(sorted(_text(k) for k in fields))
        raise Rejected("no_cmd_field", f"entry has no `cmd` field (fields: {names})")
    try:
        return ev.decode_command(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise classify_decode_error(exc) from None


class ErpIntake:
    """Reads, validates and applies ERP commands; dead-letters the invalid ones."""

    def __init__(self, bus: BusConfig, redis: RedisConfig, mes: MesState, writer: Writer,
                 relay: Relay | None = None,
                 rejected: dict[str, tuple[str, str, str]] | None = None) -> None:
        self.bus = bus
        self.redis_config = redis
        self.mes = mes
        self.writer = writer
        self.relay = relay
        self.stream = f"{bus.prefix}:erp:commands"
        self.dead_stream = f"{bus.prefix}:erp:dead"
        self.applied_total = 0
        self.dead_total = 0
        self.duplicate_total = 0
        # entry id -> (digest of its cmd, code, reason) of entries the state refused (durable)
        self.rejected = rejected if rejected is not None else {}
        self.paused = False  # True while the outbox is at its bound (commands wait in Redis)
        self._stopping = False
        self._idle = asyncio.Event()  # set while no batch is being applied
        self._idle.set()

    def handle(self, entry_id: str, fields: dict) -> Rejected | None:
        """Validate and apply one entry (not yet durable); return the rejection, if any."""
        digest = _digest(fields)
        known = self.rejected.get(entry_id)
        if known is not None and known[0] == digest:
            # Delivered again (a retry, a Redis blip, a restart before XACK): it was judged
            # against the state of its turn; a later state (its lot created since) must not
            # turn a dead letter into an apply.
            return Rejected(known[1], known[2])
        try:
            cmd = decode_entry(fields)
            applied = self.mes.apply_command(cmd)
        except Rejected as rej:
            return rej  # the entry itself is malformed: judged the same on every delivery
        except MesError as exc:
            rej = Rejected(exc.code, str(exc))
            self.rejected[entry_id] = (digest, rej.code, rej.reason)
            self.writer.reject((entry_id, digest, rej.code, rej.reason, time.time()))
            return rej
        if applied:
            self.applied_total += 1
            COMMANDS.labels("applied").inc()
            log.debug("erp command %s (%s) applied from entry %s", cmd.command_id,
                      cmd.__struct_config__.tag, entry_id)
        else:
            self.duplicate_total += 1
            COMMANDS.labels("duplicate").inc()
            log.info("erp command %s (entry %s) was applied before: acknowledged, ignored",
                     cmd.command_id, entry_id)
        return None

    async def process(self, client, entries: list) -> None:
        """Handle a batch of entries: apply, dead-letter, wait for durability, then XACK."""
        dead: list[tuple[str, dict, Rejected]] = []
        ids = []
        for entry_id, fields in entries:
            entry_id = _text(entry_id)
            ids.append(entry_id)
            if not fields:
                # Deleted while pending (trimmed, XDEL): Redis hands back the id with no
                # fields (redis-py makes that {}; an entry always has a field). It may have
                # been applied before a crash: nothing to judge, no dead letter; acknowledge.
                continue
            rej = self.handle(entry_id, fields)
            if rej is not None:
                dead.append((entry_id, fields, rej))
        await self.writer.durable()
        if dead:
            pipe = client.pipeline(transaction=False)
            for entry_id, fields, rej in dead:
                original = {_text(k): _text(v) for k, v in fields.items()}
                pipe.xadd(self.dead_stream, {
                    "entry_id": entry_id, "code": rej.code, "reason": rej.reason,
                    "original": json.dumps(original), "cmd": original.get("cmd", ""),
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    maxlen=self.bus.stream_maxlen, approximate=True)
            # Not in the XACK's pipeline: Redis may refuse an XADD (OOM, WRONGTYPE, ACL) and
            # still take the XACK, which would acknowledge the command with no dead letter.
            results = await pipe.execute(raise_on_error=False)
            refused = [r for r in results if isinstance(r, Exception)]
            if refused:
                raise ReplyError(f"Redis refused {len(refused)} dead letters on "
                                 f"{self.dead_stream}: {refused[0]}")
        if ids:
            await client.xack(self.stream, self.bus.consumer_group, *ids)
        for entry_id, _fields, rej in dead:
            self.dead_total += 1
            COMMANDS.labels("dead").inc()
            DEAD_LETTERS.labels(rej.code).inc()
            log.warning("erp entry %s dead-lettered to %s: %s: %s", entry_id, self.dead_stream,
                        rej.code, rej.reason)

    async def stop(self) -> None:
        """Stop taking commands: finish (apply, commit, acknowledge) the batch in hand, then return.

        `run()` stops reading at its next turn (within `erp_block_ms`) and then waits to
        be cancelled; commands not yet read stay in Redis for the next start.
        """
        self._stopping = True
        await self._idle.wait()

    async def _ensure_group(self, client) -> None:
        try:
            await client.xgroup_create(self.stream, self.bus.consumer_group, id="0",
                                       mkstream=True)
            log.info("created consumer group %s on %s", self.bus.consumer_group, self.stream)
        except ResponseError as exc:  # BUSYGROUP: it exists, which is the normal case
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recover(self, client) -> None:
        # Own pending entries first (we crashed between apply and XACK): re-apply is a no-op
        # thanks to the command-id dedupe, so this only finishes the acknowledgement.
        group, me, n = self.bus.consumer_group, self.bus.consumer_name, self.bus.erp_batch_commands
        while True:
            resp = await client.xreadgroup(group, me, {self.stream: "0"}, count=n)
            entries = resp[0][1] if resp else []
            if not entries:
                break
            log.info("erp: re-processing %d pending command entries", len(entries))
            self._idle.clear()
            try:
                await self.process(client, entries)
            finally:
                self._idle.set()
        await self._claim(client)

    async def _claim(self, client) -> None:
        """Take over entries another consumer has left pending longer than erp_claim_idle_s."""
        group, me, n = self.bus.consumer_group, self.bus.consumer_name, self.bus.erp_batch_commands
        start = "0-0"
        idle_ms = int(self.bus.erp_claim_idle_s * 1000)
        while True:
            resp = await client.xautoclaim(self.stream, group, me, idle_ms, start, count=n)
            start, entries = _text(resp[0]), resp[1]
            if entries:
                log.info("erp: claimed %d entries another consumer left pending", len(entries))
                await self.process(client, entries)
            if start == "0-0":
                break

    async def run(self) -> None:
        """Read and apply commands until cancelled; survive Redis outages."""
        backoff = Backoff(self.redis_config.backoff_initial_s, self.redis_config.backoff_max_s)
        outage = Outage("erp intake", self.redis_config.url)
        client = make_client(self.redis_config)
        group, me = self.bus.consumer_group, self.bus.consumer_name
        recovered = False
        refused = False
        last_claim = time.monotonic()
        try:
            while not self._stopping:
                raise_if_cancelled()
                if self.relay is not None and self.relay.full:
                    if not self.paused:
                        self.paused = True
                        log.error("erp intake paused: outbox at its bound (%d events); "
                                  "commands wait in %s", self.relay.depth, self.stream)
                    await asyncio.sleep(0.5)
                    continue
                if self.paused:
                    self.paused = False
                    log.info("erp intake resumed: outbox below its bound")
                try:
                    if not recovered:
                        await self._ensure_group(client)
                        await self._recover(client)
                        recovered = True
                        last_claim = time.monotonic()
                    elif time.monotonic() - last_claim >= max(1.0, self.bus.erp_claim_idle_s):
                        # A consumer that died after we started leaves entries pending too.
                        await self._claim(client)
                        last_claim = time.monotonic()
                    resp = await client.xreadgroup(group, me, {self.stream: ">"},
                                                   count=self.bus.erp_batch_commands,
                                                   block=self.bus.erp_block_ms)
                    if resp and not self._stopping:
                        self._idle.clear()
                        try:
                            await self.process(client, resp[0][1])
                        finally:
                            self._idle.set()
                except REDIS_DOWN as exc:
                    outage.down(exc, time.monotonic())
                    recovered = False  # anything read but not acked is pending: re-read it
                    await asyncio.sleep(backoff.next())
                    continue
                except ReplyError as exc:
                    # Reachable but refusing dead letters: the batch stays pending; retry it.
                    if not refused:
                        refused = True
                        log.error("erp intake: %s; fix Redis (memory, ACL, key types) - "
                                  "retrying", exc)
                    recovered = False
                    await asyncio.sleep(backoff.next())
                    continue
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis lost the stream (restarted without persistence): recreate the group.
                    log.warning("erp intake: consumer group %s on %s is gone; recreating it",
                                group, self.stream)
                    recovered = False
                    continue
                if refused:
                    refused = False
                    log.info("erp intake: Redis accepts dead letters again")
                outage.up(time.monotonic())
                backoff.reset()
            log.info("erp intake stopped: new commands wait in %s", self.stream)
            await asyncio.Event().wait()  # stopped: stay parked (a task runs until cancelled)
        finally:
            await client.aclose()
