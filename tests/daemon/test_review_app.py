"""Review of the App as journald and systemctl show it: which warm-up failed, and why."""

import asyncio
import logging

from daemon.app import App
from daemon.sdnotify import Notifier
from tests.daemon.test_app import NotifySocket, make_app


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
