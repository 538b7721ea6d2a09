"""A part that stops making progress fails /healthz and stops the systemd watchdog pings.

The tick keeps running when the store's disk stops answering (the commit hangs on the
store thread): without a liveness check the watchdog was pinged and /healthz said ok while
no event was acknowledged to any tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

from daemon import config
from daemon.app import App
from daemon.sdnotify import Notifier
from tests.daemon.bus_support import running_bus
from tests.support import eventually


def datagrams(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


async def test_a_stuck_part_fails_healthz_and_stops_the_watchdog_until_it_moves(
        tmp_path, caplog) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    app = App(config.loads("[tick]\ninterval_s = 0.05\n[http]\nenabled = false\n"),
              notifier=Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}))
    stuck = ["the disk is not answering"]
    app.add_liveness_check("store", lambda: stuck[0])
    task = asyncio.create_task(app.tick.run_loop())
    try:
        await eventually(lambda: app.tick.count >= 6, what="six ticks")
        assert app.healthy() == (False, "store: the disk is not answering")
        assert "WATCHDOG=1" not in datagrams(sock)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "not pinging the systemd watchdog" in errors[0].message
        stuck[0] = ""
        await eventually(lambda: "WATCHDOG=1" in datagrams(sock), what="pings again")
        assert app.healthy() == (True, "ok")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def test_a_commit_that_does_not_come_back_is_measured(redis_url, tmp_path) -> None:
    """The store thread blocks in COMMIT (a stalled disk): the writer says how long."""
    async with running_bus(redis_url, tmp_path, erp=False) as bus:
        store = bus.writer.store
        gate = threading.Event()
        real_commit = store.commit

        def stalled_commit() -> None:
            gate.wait(30)
            real_commit()

        store.commit = stalled_commit
        bus.mes.define_tool("T1", "G")
        try:
            await eventually(lambda: bus.writer.commit_stalled_s() > 0.3, what="stall seen")
        finally:
            gate.set()
        await asyncio.wait_for(bus.writer.durable(), 10)
        assert bus.writer.commit_stalled_s() == 0.0


async def test_a_first_tick_that_never_ends_makes_healthz_fail() -> None:
    """/healthz said ok for as long as no tick had completed, so a first tick stuck on an
    await (a step waiting on something that never comes) was never reported."""
    app = App(config.loads("[tick]\ninterval_s = 0.05\nstale_after_intervals = 2\n"
                           "[http]\nenabled = false\n"), notifier=Notifier({}))
    assert app.healthy() == (True, "ok")        # warming up: the tick has not started
    never = asyncio.Event()
    app.tick.add_step("stuck", never.wait)
    task = asyncio.create_task(app.tick.run_loop())
    try:
        await eventually(lambda: not app.healthy()[0], what="stale reported")
        assert app.healthy() == (False, "tick is stale") and app.tick.count == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
