"""The App supervises components: a crash is logged by name and restarted, or stops the daemon."""

import asyncio
import itertools
import logging

from daemon import config
from daemon.app import App
from daemon.sdnotify import Notifier
from daemon.tick import Tick
from tests.support import eventually


def make_app(**service) -> App:
    text = "[tick]\ninterval_s = 0.05\n[http]\nenabled = false\n[service]\n" + "".join(
        f"{k} = {v}\n" for k, v in service.items())
    return App(config.loads(text), notifier=Notifier({}))


async def test_crashing_component_is_logged_by_name_and_restarted(caplog):
    app = make_app(component_restart_max_backoff_s=0.1)
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("lost the plot")
        await asyncio.Event().wait()

    app.add_component("flaky-adapter", flaky)
    task = asyncio.create_task(app.run())
    with caplog.at_level(logging.ERROR, logger="fabd.app"):
        await eventually(lambda: len(runs) >= 3, timeout_s=10, what="third start")
    assert app.components[0].restarts == 2
    assert any("component flaky-adapter crashed" in r.getMessage() for r in caplog.records)
    app.request_stop("test over")
    assert await task == 0


async def test_crash_of_a_critical_component_stops_the_daemon_with_exit_1(caplog):
    app = make_app()

    async def store_writer() -> None:
        await asyncio.sleep(0.05)
        raise OSError("disk full")

    app.add_component("store-writer", store_writer, critical=True)
    with caplog.at_level(logging.ERROR):
        rc = await asyncio.wait_for(app.run(), 10)
    assert rc == 1
    assert any("store-writer" in r.getMessage() and "disk full" in r.getMessage()
               for r in caplog.records)


async def test_component_that_returns_while_running_counts_as_a_crash():
    app = make_app(component_restart_max_backoff_s=0.1)
    starts = []

    async def quitter() -> None:
        starts.append(1)

    app.add_component("quitter", quitter)
    task = asyncio.create_task(app.run())
    await eventually(lambda: len(starts) >= 2, what="restart after silent return")
    app.request_stop()
    assert await task == 0


async def test_stop_hooks_run_in_phase_order_and_a_slow_hook_cannot_exceed_its_budget():
    app = make_app(stop_intake_budget_s=0.2, stop_flush_budget_s=0.2, stop_sessions_budget_s=0.2)
    order = []

    async def slow_flush() -> None:
        order.append("flush")
        await asyncio.sleep(30)

    app.add_stop_hook("sessions", "separate", lambda: order.append("sessions"))
    app.add_stop_hook("flush", "outbox", slow_flush)
    app.add_stop_hook("intake", "erp", lambda: order.append("intake"))
    task = asyncio.create_task(app.run())
    await eventually(lambda: app.ready)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    app.request_stop()
    assert await task == 0
    assert order == ["intake", "flush", "sessions"]
    assert loop.time() - t0 < 0.6 + 0.5  # three budgets plus scheduling slack


async def test_failed_warmup_means_no_ready_and_exit_1():
    app = make_app()

    def warm() -> None:
        raise RuntimeError("kernel did not compile")

    app.add_warmup("spc-kernels", warm)
    assert await asyncio.wait_for(app.run(), 10) == 1
    assert not app.ready


async def test_overrunning_tick_is_reported_not_stacked():
    tick = Tick(interval_s=0.05)
    starts = []

    async def slow_step() -> None:
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.12)

    tick.add_step("slow", slow_step)
    task = asyncio.create_task(tick.run_loop())
    await eventually(lambda: len(starts) >= 4, what="four ticks")
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Not stacked: a new tick never starts right after an overrun one to "catch up".
    assert all(g >= 0.12 for g in gaps), gaps
    assert tick.overruns >= 3


async def test_tick_runs_steps_in_order_and_survives_a_failing_step():
    tick = Tick(interval_s=0.01)
    seen = []
    tick.add_step("events", lambda: seen.append("events"))
    tick.add_step("spc", lambda: 1 / 0)
    tick.add_step("dispatch", lambda: seen.append("dispatch"))
    await tick.run_once()
    await tick.run_once()
    assert seen == ["events", "dispatch", "events", "dispatch"]


class NotifySocket:
    """A systemd-like $NOTIFY_SOCKET the test reads (real datagram socket)."""

    def __init__(self, path) -> None:
        import socket

        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out += self.sock.recv(4096).decode().split("\n")
            except BlockingIOError:
                return out


async def test_sigterm_during_warm_up_skips_the_rest_says_stopping_and_closes(tmp_path):
    import os
    import signal

    notify = NotifySocket(tmp_path / "notify")
    cfg = make_app().config
    app = App(cfg, notifier=Notifier({"NOTIFY_SOCKET": notify.path}))
    done = []
    app.add_warmup("store", lambda: done.append("store opened"))

    def compile_kernels() -> None:
        # systemctl stop while numba compiles (the loop is blocked: no await in here)
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("spc compiled")

    app.add_warmup("spc-kernels", compile_kernels)
    app.add_warmup("dispatch-kernels", lambda: done.append("dispatch compiled"))

    async def session() -> None:
        done.append("session started")
        await asyncio.Event().wait()

    app.add_component("tool-session", session)
    app.add_closer("store", lambda: done.append("store closed"))
    assert await asyncio.wait_for(app.run(), 30) == 0
    # the rest of the warm-up (minutes of compiling on a first start) is skipped, nothing
    # runs, what the warm-up opened is closed, and systemd hears STOPPING, never READY
    assert done == ["store opened", "spc compiled", "store closed"]
    msgs = notify.messages()
    assert "STOPPING=1" in msgs and "READY=1" not in msgs, msgs
    assert not app.ready
