"""Start-up steps a tool does not support: the GEM start-up goes on without them.

A plain secsgem 0.3 equipment handler cannot decode S2F31 (date and time set): it drops
the message with a logged exception and answers nothing, so the host waits T3. The
start-up used to fail on that T3 and start again, forever: the tool never came on line
unless `set_clock = false` was configured for it. Tools that answer S9F5 were skipped
quietly (INFO) at every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from equipment import metrics
from equipment.events import AlarmSet, RecordingSink, ToolConnected
from equipment.gem.config import GemToolConfig
from equipment.gem.profile import GemDriverProfile
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig
from tests.equipment.test_hsms_interop import secsgem_equipment
from tests.support import eventually

# secsgem's own equipment knows none of the fabd-sim report, event or status ids.
_PLAIN = GemDriverProfile(name="secsgem-plain")


def _hsms(port: int, t3_s: float) -> HsmsConfig:
    return HsmsConfig(host="127.0.0.1", port=port, t3_reply_timeout_s=t3_s,
                      t5_connect_separation_s=0.2, t6_control_timeout_s=10.0,
                      t7_not_selected_timeout_s=20.0, reconnect_backoff_max_s=0.5,
                      linktest_interval_s=0, e37_ranges=False)


@contextlib.asynccontextmanager
async def _session(config: GemToolConfig, sink: RecordingSink,
                   profile: GemDriverProfile | None = None) -> AsyncIterator[GemHostSession]:
    session = GemHostSession(config, sink, profile)
    task = asyncio.create_task(session.run(), name=f"hsms[{config.tool_id}]")
    try:
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _reconnect(session: GemHostSession) -> None:
    """Drop the connection from the host side and wait for the next start-up to finish."""
    before = session.state.connects_total
    assert session._link is not None and session._link.session is not None
    session._link.session.close("test: reconnect")
    await session.wait_for(lambda s: s.communicating and s.connects_total > before, 60)


def _warnings(caplog: pytest.LogCaptureFixture, tool_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "fabd.gem" and r.levelno == logging.WARNING
            and tool_id in r.getMessage() and "set_clock" in r.getMessage()]


async def test_a_secsgem_tool_that_never_answers_s2f31_comes_online_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with secsgem_equipment() as port:
        timeouts = metrics.REPLY_TIMEOUTS.labels("SG-PLAIN", "hsms")
        t3_before = timeouts._value.get()
        config = GemToolConfig(tool_id="SG-PLAIN", hsms=_hsms(port, 2.0), comm_retry_s=0.3)
        assert config.set_clock  # the default: the operator did not turn it off
        sink = RecordingSink()
        async with _session(config, sink, _PLAIN) as session:
            await session.wait_for(lambda s: s.communicating, 60)
            await eventually(lambda: sink.of(ToolConnected), 30, what="ToolConnected")
            [warning] = _warnings(caplog, "SG-PLAIN")
            assert "S2F31" in warning and "T3" in warning
            assert timeouts._value.get() - t3_before == 1   # one T3, not one per attempt


@pytest.fixture
def sim() -> Iterator[GemToolSim]:
    tool = GemToolSim(GemToolSimConfig(tool_id="SIM-NOCLK", process_time_s=0.3,
                                       t3_reply_timeout_s=30.0))
    asyncio.run(tool.start())
    yield tool
    asyncio.run(tool.stop())


@pytest.mark.parametrize("answer", ["S9F5", "T3"])
async def test_a_tool_without_s2f31_is_warned_about_once_and_given_up(
        sim: GemToolSim, caplog: pytest.LogCaptureFixture, answer: str) -> None:
    caplog.set_level(logging.INFO)
    if answer == "S9F5":
        sim.unsupported = {(2, 31)}   # as a tool without a settable clock answers
    else:
        sim.unanswered = {(2, 31)}    # as secsgem 0.3 (does not answer at all)
    config = GemToolConfig(tool_id="SIM-NOCLK", hsms=_hsms(sim.port, 2.0), comm_retry_s=0.3,
                           spool_settle_s=0.2)
    sink = RecordingSink()
    async with _session(config, sink) as session:
        await session.wait_for(lambda s: s.communicating, 60)
        [warning] = _warnings(caplog, "SIM-NOCLK")
        assert answer in warning
        await _reconnect(session)
        # S9F5 is an answer: not sent again. One T3 may be a busy tool: sent once more, and
        # given up after the second start-up without an answer (T3 not waited again)
        tries = 1 if answer == "S9F5" else 2
        assert sim.received.count((2, 31)) == tries
        await _reconnect(session)
        assert sim.received.count((2, 31)) == tries
        assert len(_warnings(caplog, "SIM-NOCLK")) == 1
        assert sim.enabled_ceids == [3001, 3002, 3003, 3004, 3005]  # the rest of the start-up


async def test_an_s2f31_unanswered_in_a_start_up_that_then_failed_is_sent_again(
        sim: GemToolSim, caplog: pytest.LogCaptureFixture) -> None:
    # A link going bad leaves every message unanswered, the clock set among them: that
    # start-up fails, and the clock is set at the next one, not given up for good.
    caplog.set_level(logging.INFO)
    sim.unanswered = {(2, 31), (2, 37)}
    config = GemToolConfig(tool_id="SIM-NOCLK", hsms=_hsms(sim.port, 1.0), comm_retry_s=0.3,
                           spool_settle_s=0.2)
    async with _session(config, RecordingSink()) as session:
        await eventually(lambda: sim.received.count((2, 37)) >= 1, 30,
                         what="the start-up reached S2F37")
        sim.unanswered = set()
        await session.wait_for(lambda s: s.communicating, 60)
        assert sim.received.count((2, 31)) >= 2 and sim.clock_set_to
        await _reconnect(session)
        assert sim.received.count((2, 31)) >= 3   # supported after all: set at every connect


async def test_one_slow_answer_to_alarm_enable_does_not_switch_alarms_off_for_good(
        sim: GemToolSim) -> None:
    # A busy tool lets one S5F3 pass T3; the start-up goes on without it. At the next
    # connect the alarms are enabled again, and the tool's alarms reach fabd.
    sim.unanswered = {(5, 3)}
    config = GemToolConfig(tool_id="SIM-NOCLK", hsms=_hsms(sim.port, 1.0), comm_retry_s=0.3,
                           spool_settle_s=0.2)
    sink = RecordingSink()
    async with _session(config, sink) as session:
        await session.wait_for(lambda s: s.communicating, 60)
        sim.unanswered = set()
        await _reconnect(session)
        await sim.raise_alarm(5001)
        await eventually(lambda: sink.of(AlarmSet), 30, what="the alarm reached fabd")
