"""Review of the App as journald and systemctl show it: which warm-up failed, and why."""

import asyncio
import logging

from daemon.app import App
from daemon.sdnotify import Notifier
from tests.daemon.test_app import NotifySocket, make_app
from tests.support import eventually


async def test_a_failed_warm_up_is_named_in_the_log_and_in_systemctl_status(tmp_path, caplog):
    # The log said only "warm-up failed; not starting": with the store, two kernels, http and
    # sighup warming up, journalctl did not say which one (a busy [http] listen port, say).
    notify = NotifySocket(tmp_path / "notify")
    app = App(make_app().config, notifier=Notifier({"NOTIFY_SOCKET": notify.path}))
    app.add_warmup("store", lambda: None)

    def bind() -> None:
        raise OSError(98, "address already in use")

    app.add_warmup("http", bind)
    with caplog.at_level(logging.ERROR, logger="fabd.app"):
        assert await asyncio.wait_for(app.run(), 10) == 1
    assert any(r.getMessage().startswith("warm-up http failed: [Errno 98] address already in use")
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    msgs = notify.messages()
    assert "STATUS=warm-up http failed: [Errno 98] address already in use" in msgs, msgs
    assert "READY=1" not in msgs


async def test_a_stop_phase_over_its_budget_names_the_key_that_sets_it(caplog):
    # "stop flush: over its 0.2s budget; moving on (outbox)" did not say which setting that is.
    app = make_app(stop_flush_budget_s=0.2)

    async def slow_flush() -> None:
        await asyncio.sleep(30)

    app.add_stop_hook("flush", "outbox", slow_flush)
    task = asyncio.create_task(app.run())
    await eventually(lambda: app.ready)
    with caplog.at_level(logging.ERROR, logger="fabd.app"):
        app.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stop flush: outbox over its 0.2s budget "
                            "(service.stop_flush_budget_s)") for m in lines), lines
