"""Group commit: a full batch is committed at once, without waiting out the commit window."""

import asyncio

from daemon.busconfig import StoreConfig
from daemon.mes import MesState
from daemon.store import Store, read_journal
from daemon.writer import Writer


async def test_a_batch_that_fills_during_the_window_is_committed_without_waiting_it_out(
        tmp_path) -> None:
    store = Store(tmp_path / "fabd.sqlite3")
    loaded = store.open()
    mes = MesState(instance_id=loaded.instance_id)
    window_s = 1.0  # the longest window the config allows
    writer = Writer(mes, store, StoreConfig(commit_interval_ms=window_s * 1000,
                                            commit_max_events=200))
    run = asyncio.create_task(writer.run())
    loop = asyncio.get_running_loop()
    try:
        mes.wip_snapshot()  # the first event opens the window
        await asyncio.sleep(0.05)
        t0 = loop.time()
        for _ in range(300):  # a burst: commit_max_events are waiting
            mes.wip_snapshot()
        await asyncio.wait_for(writer.durable(), 2 * window_s)
        waited_s = loop.time() - t0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        store.close()
        store.shutdown()
    assert len(read_journal(tmp_path / "fabd.sqlite3")) == 301
    # Acknowledged (S6F12, XACK) as soon as the batch is full, not a window later.
    assert waited_s < window_s / 2, waited_s


async def test_a_waiter_cancelled_mid_commit_does_not_cancel_the_others(tmp_path) -> None:
    # Many tools' events share one group commit. One tool's session is cancelled (its
    # connection dropped) while it waits: the others must still get their commit, and ack.
    store = Store(tmp_path / "fabd.sqlite3")
    loaded = store.open()
    mes = MesState(instance_id=loaded.instance_id)
    writer = Writer(mes, store, StoreConfig(commit_interval_ms=200))
    run = asyncio.create_task(writer.run())
    acked: list[str] = []

    async def session(tool_id: str) -> None:
        mes.wip_snapshot()  # this tool's event
        await writer.durable()
        acked.append(tool_id)  # S6F12

    try:
        dropped = asyncio.create_task(session("ETCH01"))
        kept = asyncio.create_task(session("LITHO01"))
        await asyncio.sleep(0.05)  # both wait in the same group-commit window
        dropped.cancel()
        await asyncio.wait_for(asyncio.gather(dropped, kept, return_exceptions=True), 5)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        store.close()
        store.shutdown()
    assert dropped.cancelled()
    assert not kept.cancelled() and kept.exception() is None
    assert acked == ["LITHO01"]
    assert len(read_journal(tmp_path / "fabd.sqlite3")) == 2
