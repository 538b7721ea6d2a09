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
