"""Group commit: one writer coroutine turns the MES state's pending changes into SQLite transactions.

Transitions mutate `MesState` at once and leave their changes in its pending
batch; the writer commits whatever is pending every `commit_interval_ms` (or
sooner when `commit_max_events` wait) in ONE transaction on the store thread.
Rows are bound on the event-loop thread, the COMMIT (write + fsync) runs on
the store thread. Callers that must not go on before their change is durable
await `durable()`:
it resolves after the commit that holds everything mutated before the call.
So a burst of 5,000 tool events costs one fsync, not 5,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from daemon.busconfig import StoreConfig
from daemon.mes import MesState
from daemon.store import EventRow, RejectedRow, Store

log = logging.getLogger(__name__)

COMMIT_DURATION = Histogram(
    "fabd_store_commit_duration_seconds", "Wall time of one group commit (write + fsync)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
COMMITTED_EVENTS = Counter("fabd_store_events_committed_total",
                           "Outbound events committed to the journal")

PRUNE_EVERY_COMMITS = 200


class Writer:
    """The single writer of the store: batches MesState changes into group commits."""

    def __init__(self, mes: MesState, store: Store, config: StoreConfig,
                 committed_jseq: int = 0, sent_jseq: int = 0) -> None:
        self.mes = mes
        self.store = store
        self.config = config
        self.committed_jseq = committed_jseq
        self.sent_jseq = sent_jseq  # relay cursor as last written to the store
        self._sent_pending: int | None = None
        self._rejected: list[RejectedRow] = []  # ERP entries refused since the last commit
        self._wake = asyncio.Event()
        self._full = asyncio.Event()  # commit_max_events wait: commit now
        self._collecting: asyncio.Future[None] | None = None  # resolves at the next commit
        self._inflight: asyncio.Future[None] | None = None  # resolves at the running commit
        self._failed: BaseException | None = None
        self._commits = 0
        self._commit_since: float | None = None  # monotonic start of the commit under way
        self._lock: asyncio.Lock | None = None  # run() and flush() may both commit at stop
        self.on_commit: list[Callable[[list[EventRow]], None]] = []  # relay's in-memory feed
        mes.on_pending = self._on_pending

    def _on_pending(self, n_events: int) -> None:
        if n_events <= 1 or n_events >= self.config.commit_max_events:
            self._wake.set()
        if n_events >= self.config.commit_max_events:
            self._full.set()  # ends the group-commit window early

    def reject(self, row: RejectedRow) -> None:
        """Record an ERP entry the state refused (committed with the changes made before it)."""
        self._rejected.append(row)
        self._wake.set()

    def _has_pending(self) -> bool:
        return self.mes.has_pending() or bool(self._rejected)

    def durable(self) -> asyncio.Future[None]:
        """Return a future that resolves once every change made so far is committed."""
        if self._failed is not None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(self._failed)
            return fut
        # Every caller shares the commit's future, so each gets it shielded: a caller that is
        # cancelled (a session whose tool dropped) would otherwise cancel the shared future,
        # and with it every other caller waiting on that commit (no S6F12, no XACK for them).
        if self._has_pending():
            if self._collecting is None:
                self._collecting = asyncio.get_running_loop().create_future()
            self._wake.set()
            return asyncio.shield(self._collecting)
        if self._inflight is not None and not self._inflight.done():
            return asyncio.shield(self._inflight)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def mark_sent(self, jseq: int) -> None:
        """Record the relay cursor (written with the next commit; a crash re-sends, never loses)."""
        self._sent_pending = jseq
        self._wake.set()

    @property
    def outbox_depth(self) -> int:
        """Committed events the relay has not yet published."""
        return self.committed_jseq - (self._sent_pending or self.sent_jseq)

    async def run(self) -> None:
        """Commit pending changes until cancelled; a final commit happens in `flush()`."""
        interval_s = self.config.commit_interval_ms / 1000.0
        while True:
            await self._wake.wait()
            if interval_s > 0 and self.mes.pending_events() < self.config.commit_max_events:
                # The group-commit window: let more arrive, unless the batch fills first.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval_s):
                        await self._full.wait()
            self._wake.clear()
            self._full.clear()
            await self.commit_once()

    async def commit_once(self) -> None:
        """Commit what is pending now (no-op when nothing is)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one transaction at a time on the one connection
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        if self._failed is not None:
            raise self._failed
        if not self._has_pending() and self._sent_pending is None:
            return
        batch = self.mes.take_batch()
        rejected, self._rejected = self._rejected, []
        waiter, self._collecting = self._collecting, None
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        self._inflight = waiter
        meta: list[tuple[str, str]] = []
        if batch.events:
            last = batch.events[-1][0]
            meta.append(("jseq", str(last)))
            streams = {row[1]: row[2] for row in batch.events}  # last seq per stream
            meta.extend((f"seq:{s}", str(n)) for s, n in streams.items())
        sent = self._sent_pending
        if sent is not None:
            meta.append(("sent_jseq", str(sent)))
        self._commits += 1
        prune = 0
        keep = self.config.journal_keep_events
        # The cursor on disk once this commits: this batch's, else the last one written (a
        # commit without a new cursor must prune too, or a rhythm where those fall on every
        # PRUNE_EVERY_COMMITS-th commit would never prune).
        cursor = sent if sent is not None else self.sent_jseq
        if self._commits % PRUNE_EVERY_COMMITS == 0 and cursor > keep:
            prune = cursor - keep + 1
        t0 = time.perf_counter()
        try:
            self.store.stage(batch.entities, batch.events, batch.commands, meta, prune,
                             rejected)
        except Exception as exc:
            self._finish(batch.events, waiter, sent, exc, t0)
            raise
        self._commit_since = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(self.store.executor, self.store.commit)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Stopping: the commit already runs on the store thread; finish its bookkeeping
            # (and resolve its waiters) before honouring the cancellation.
            await asyncio.wait([fut])
            self._finish(batch.events, waiter, sent, fut.exception(), t0)
            raise
        except Exception as exc:
            self._finish(batch.events, waiter, sent, exc, t0)
            raise
        self._finish(batch.events, waiter, sent, None, t0)

    def commit_stalled_s(self) -> float:
        """How long the commit on the store thread has been running (0 when none is)."""
        since = self._commit_since
        return 0.0 if since is None else time.monotonic() - since

    def _finish(self, events: list[EventRow], waiter: asyncio.Future[None], sent: int | None,
                exc: BaseException | None, t0: float) -> None:
        self._commit_since = None
        if exc is not None:
            # Memory is now ahead of disk: nothing may be acknowledged any more. Fail every
            # waiter; the daemon stops and restarts from what the store holds.
            self._failed = exc
            for w in (waiter, self._collecting):
                if w is not None and not w.done():
                    w.set_exception(exc)
            log.critical("store commit failed, stopping: %s", exc)
            return
        COMMIT_DURATION.observe(time.perf_counter() - t0)
        if sent is not None:
            self.sent_jseq = sent
            if self._sent_pending == sent:
                self._sent_pending = None
        if events:
            self.committed_jseq = events[-1][0]
            COMMITTED_EVENTS.inc(len(events))
            for callback in self.on_commit:
                callback(events)
        if not waiter.done():
            waiter.set_result(None)

    async def flush(self) -> None:
        """Commit everything pending now and wait for it (used at stop)."""
        # A commit run() has in flight already took its batch out of the state, so nothing
        # looks pending; wait for it too (it holds the lock), or drain() would read
        # committed_jseq from before that batch and return before it is published.
        while (self._has_pending() or self._sent_pending is not None
               or (self._lock is not None and self._lock.locked())):
            await self.commit_once()
