"""The tick under trouble that lasts: counted every time, logged when it starts and ends."""

import asyncio
import logging

from prometheus_client import REGISTRY

from daemon.tick import Tick
from tests.support import eventually


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_step_that_keeps_failing_is_logged_once_and_its_recovery_once(caplog):
    tick = Tick(interval_s=0.01)
    broken = {"on": True}

    def dispatch() -> None:
        if broken["on"]:
            raise RuntimeError("scorer lost its arrays")

    tick.add_step("review_dispatch", dispatch)
    errors_before = sample("fabd_tick_step_errors_total", step="review_dispatch")
    with caplog.at_level(logging.INFO, logger="fabd.tick"):
        for _ in range(50):  # 50 s of a 1 s tick
            await tick.run_once()
        broken["on"] = False
        await tick.run_once()
        await tick.run_once()
    # Every failure is counted...
    assert sample("fabd_tick_step_errors_total", step="review_dispatch") - errors_before == 50
    # ...but the log says it once, with its traceback, and once when the step works again.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None and "review_dispatch" in errors[0].getMessage()
    back = [r for r in caplog.records if r.levelno == logging.INFO
            and "review_dispatch" in r.getMessage()]
    assert len(back) == 1 and "50" in back[0].getMessage(), [r.getMessage() for r in back]


async def test_a_tick_that_keeps_overrunning_is_logged_once_and_its_recovery_once(caplog):
    tick = Tick(interval_s=0.1)
    slow = {"on": True}
    ticks = []

    async def spc() -> None:
        ticks.append(1)
        if slow["on"]:
            await asyncio.sleep(0.15)

    tick.add_step("review_spc", spc)
    overruns_before = sample("fabd_tick_overruns_total")
    with caplog.at_level(logging.INFO, logger="fabd.tick"):
        task = asyncio.create_task(tick.run_loop())
        try:
            await eventually(lambda: len(ticks) >= 10, what="ten slow ticks")
            slow["on"] = False
            n = len(ticks)
            await eventually(lambda: len(ticks) >= n + 5, what="five ticks on time")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # Every skipped slot is counted...
    assert tick.overruns >= 9
    assert sample("fabd_tick_overruns_total") - overruns_before == tick.overruns
    # ...but an overload that lasts is one WARNING when it starts and one INFO when it ends.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    back = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(back) == 1 and "on time" in back[0].getMessage(), [r.getMessage() for r in back]
