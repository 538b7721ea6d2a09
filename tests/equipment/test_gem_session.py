"""GEM host session against the secsgem tool simulator, over real loopback sockets.

One simulator serves the whole module (secsgem is slow to start); every test
runs its own host session and stops it at the end, so the tool sees a new host
each time (and re-definitions on every start-up, as after a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import AsyncIterator, Iterator

import pytest

from equipment.events import (
    AlarmCleared,
    AlarmSet,
    ControlState,
    ControlStateChanged,
    E10State,
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
    RecordingSink,
    RemoteCommand,
    TerminalMessage,
    ToolConnected,
    ToolControl,
    ToolDisconnected,
)
from equipment.gem.config import GemToolConfig
from equipment.gem.errors import GemNotCommunicatingError, GemProtocolError, GemTimeoutError
from equipment.gem.session import GemHostSession
from equipment.hsms.config import HsmsConfig
from equipment.hsms.message import HsmsState
from equipment.secs import U4, A, L, encode
from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig, hsms_frame
from tests.support import eventually as _eventually


async def eventually(predicate, timeout_s: float = 60.0, **kwargs):  # type: ignore[no-untyped-def]
    """tests.support.eventually with a deadline fit for a loaded 2-core CI machine."""
    return await _eventually(predicate, timeout_s=timeout_s, **kwargs)

_lots = itertools.count(1)


def _lot() -> str:
    return f"LOT-{next(_lots):04d}"


@pytest.fixture
def sim() -> Iterator[GemToolSim]:
    """A tool of each test's own: a tool shared by the module carried one test's left-overs
    (a send loop still waiting for an ack, spooled events) into the next."""
    tool = GemToolSim(GemToolSimConfig(tool_id="SIM01", process_time_s=0.3,
                                       t3_reply_timeout_s=30.0))
    asyncio.run(tool.start())
    yield tool
    asyncio.run(tool.stop())


@pytest.fixture(autouse=True)
def _reset_knobs(sim: GemToolSim) -> Iterator[None]:
    sim.reset_knobs()
    yield
    sim.reset_knobs()


def _config(sim: GemToolSim, **overrides: object) -> GemToolConfig:
    t3 = float(overrides.pop("hsms_t3", 20.0))  # type: ignore[arg-type]
    hsms = HsmsConfig(host="127.0.0.1", port=sim.port, t3_reply_timeout_s=t3,
                      t5_connect_separation_s=0.2, t6_control_timeout_s=10.0,
                      t7_not_selected_timeout_s=20.0, reconnect_backoff_max_s=0.5,
                      linktest_interval_s=0, e37_ranges=False)
    values: dict[str, object] = {"tool_id": "SIM01", "hsms": hsms, "comm_retry_s": 0.3,
                                 "spool_settle_s": 0.2}
    values.update(overrides)
    return GemToolConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(sim: GemToolSim, sink: RecordingSink | None = None,
                  **overrides: object) -> AsyncIterator[GemHostSession]:
    session = GemHostSession(_config(sim, **overrides), sink or RecordingSink())
    task = asyncio.create_task(session.run(), name="hsms[SIM01]")
    try:
        await session.wait_for(lambda s: s.communicating, timeout_s=60)
        await eventually(lambda: sim.communicating, what="tool communicating")
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await eventually(lambda: not sim.communicating, what="tool saw the host go")


async def _run_lot(session: GemHostSession, recipe: str = "ETCH-A") -> str:
    lot = _lot()
    assert (await session.command(RemoteCommand.PP_SELECT, {"PPID": recipe})).code == 0
    result = await session.command(RemoteCommand.START, {"LOTID": lot})
    assert result.accepted and result.code == 4, result
    return lot


def _completed(sink: RecordingSink, lot: str) -> list[ProcessCompleted]:
    return [e for e in sink.of(ProcessCompleted) if e.lot_id == lot]


async def test_startup_brings_the_tool_online_with_reports_alarms_clock_and_state(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        state = session.state
        control: ToolControl = session  # the daemon drives it through this protocol
        assert control.tool_id == "SIM01"
        assert state.hsms is HsmsState.SELECTED and state.communicating
        assert state.control is ControlState.ONLINE_REMOTE
        assert state.e10 is E10State.STANDBY
        assert {"ETCH-A", "DEP-B"} <= set(state.recipes)
        assert sim.enabled_ceids == [3001, 3002, 3003, 3004, 3005]
        assert sim.enabled_alids == [5001, 5002, 5003]
        assert len(sim.clock_set_to) == 16
        await eventually(lambda: sink.of(ToolConnected), what="ToolConnected")
        assert sink.of(ControlStateChanged)[-1].state is ControlState.ONLINE_REMOTE
        assert sink.of(E10StateChanged)[-1].state is E10State.STANDBY


async def test_a_lot_runs_through_remote_commands_and_arrives_as_domain_events(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        assert (await session.command(RemoteCommand.PP_SELECT, {"PPID": "DEP-B"})).code == 0
        await session.wait_for(lambda s: s.recipe == "DEP-B", 60)  # CE RecipeChanged
        lot = await _run_lot(session)
        await session.wait_for(lambda s: s.recipe == "ETCH-A", 60)
        await eventually(lambda: _completed(sink, lot), what="ProcessCompleted")
        [done] = _completed(sink, lot)
        assert done.recipe_id == "ETCH-A" and done.ok
        assert set(done.parameters) == {"Temperature_C", "Pressure_Pa", "RFPower_W",
                                        "Thickness_nm"}
        assert abs(done.parameters["Temperature_C"] - 65.0) < 5
        started = [e for e in sink.of(ProcessStarted) if e.lot_id == lot]
        assert started and sink.events.index(started[0]) < sink.events.index(done)
        e10 = [e.state for e in sink.of(E10StateChanged)]
        assert E10State.PRODUCTIVE in e10
        await eventually(lambda: session.state.e10 is E10State.STANDBY, what="back to standby")
        assert session.state.lot_id == ""
        unknown = await session.command("DANCE", {})
        assert (unknown.accepted, unknown.code) == (False, 1)
        bad = await session.command(RemoteCommand.START, {"COLOR": "red"})
        assert (bad.accepted, bad.code) == (False, 3)


async def test_pause_resume_stop_and_abort_reach_the_tool(sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        sim.process_time_s = 30.0
        try:
            lot = await _run_lot(session)
            await eventually(lambda: sim.process_state == 2, what="executing")
            # The tool is busy: a second START cannot be done now.
            busy = await session.command(RemoteCommand.START, {"LOTID": _lot()})
            assert (busy.accepted, busy.code) == (False, 2)
            assert (await session.command(RemoteCommand.PAUSE, {})).code == 0
            assert (await session.read_status([1002]))[1002] == 3  # paused
            assert (await session.command(RemoteCommand.PAUSE, {})).code == 2
            assert (await session.command(RemoteCommand.RESUME, {})).code == 0
            assert (await session.command(RemoteCommand.STOP, {})).code == 0
            await eventually(lambda: _completed(sink, lot), what="stopped lot completed")
            assert not _completed(sink, lot)[0].ok  # a stopped lot did not get its process
            await eventually(lambda: sim.process_state == 0, what="idle")
            aborted = await _run_lot(session)
            await eventually(lambda: sim.process_state == 2, what="executing")
            assert (await session.command(RemoteCommand.ABORT, {})).code == 0
            await eventually(lambda: _completed(sink, aborted), what="aborted lot completed")
            assert not _completed(sink, aborted)[0].ok
            await eventually(lambda: sim.process_state == 0, what="idle")
            assert (await session.command(RemoteCommand.STOP, {})).code == 2  # nothing runs
        finally:
            sim.process_time_s = sim.config.process_time_s
        assert [(rcmd, hcack) for rcmd, _, hcack in sim.commands[-11:]] == [
            ("PP-SELECT", 0), ("START", 4), ("START", 2), ("PAUSE", 0), ("PAUSE", 2),
            ("RESUME", 0),
            ("STOP", 0), ("PP-SELECT", 0), ("START", 4), ("ABORT", 0), ("STOP", 2)]


async def test_a_parameter_shift_or_drift_shows_in_the_collected_parameters(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        sim.shift("Thickness_nm", 25.0)
        try:
            lot = await _run_lot(session)
            await eventually(lambda: _completed(sink, lot), what="ProcessCompleted")
        finally:
            sim.shift("Thickness_nm", -25.0)
        assert _completed(sink, lot)[0].parameters["Thickness_nm"] > 140.0
        sim.drift("Pressure_Pa", 2.0)  # +2 Pa after every lot
        try:
            lots = []
            for _ in range(2):
                lots.append(await _run_lot(session))
                await eventually(lambda: _completed(sink, lots[-1]), what="ProcessCompleted")
                await eventually(lambda: sim.process_state == 0, what="tool idle")
        finally:
            sim.reset_process()
        first, second = (_completed(sink, lot)[0].parameters["Pressure_Pa"] for lot in lots)
        assert second - first > 1.0


async def test_alarms_set_and_clear(sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink):
        await sim.raise_alarm(5001)
        await sim.clear_alarm(5001)
        await eventually(lambda: sink.of(AlarmCleared), what="AlarmCleared")
        assert [(e.alid, e.text) for e in sink.of(AlarmSet)] == [(5001, "chamber pressure high")]
        assert sink.of(AlarmCleared)[0].alid == 5001
        await eventually(lambda: "S5F1 ALID 5001 clear" in sim.acked, what="S5F2 seen")


async def test_recipes_download_list_upload_verify_delete(sim: GemToolSim) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, binary
    async with running(sim) as session:
        assert await session.recipe_download("BIG-1", body)
        assert "BIG-1" in session.state.recipes
        assert "BIG-1" in await session.recipe_list()
        assert await session.recipe_upload("BIG-1") == body
        report = await session.recipe_report("BIG-1")
        assert report.size_bytes == len(body) and len(report.checksum) == 64
        assert await session.recipe_delete(["BIG-1"])
        assert "BIG-1" not in session.state.recipes
        assert "BIG-1" not in await session.recipe_list()
        assert not await session.recipe_delete(["NO-SUCH"])
        with pytest.raises(GemProtocolError, match="not on the tool"):
            await session.recipe_upload("NO-SUCH")


async def test_status_constants_and_terminal_both_ways(sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        status = await session.read_status([1001, 1002, 1003, 1005])
        assert status[1001] == 5 and status[1002] == 0 and status[1003] == "standby"
        assert len(status[1005]) == 16
        constants = await session.read_constants([1, 2])
        assert set(constants) == {1, 2}
        assert await session.send_terminal("lot LOT-1 on hold, call process eng.")
        assert sim.terminal_received[-1] == "lot LOT-1 on hold, call process eng."
        assert await sim.send_terminal("operator: chamber wet-cleaned")
        await eventually(lambda: sink.of(TerminalMessage), what="TerminalMessage")
        assert sink.of(TerminalMessage)[0].text == "operator: chamber wet-cleaned"


async def test_trace_data_becomes_spc_points_and_a_per_lot_summary(sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink, trace_period_s=0.05) as session:
        await eventually(lambda: len(sink.point_list) >= 6, what="trace points")
        assert {p.parameter for p in sink.point_list} == {"Temperature_C", "Pressure_Pa",
                                                         "RFPower_W"}
        sim.process_time_s = 60.0  # the lot ends when we stop it, after trace data arrived
        lot = await _run_lot(session)
        await eventually(lambda: any(p.lot_id == lot for p in sink.point_list),
                         what="trace points of the lot")
        assert (await session.command(RemoteCommand.STOP, {})).code == 0
        await eventually(lambda: _completed(sink, lot), what="ProcessCompleted")
        params = _completed(sink, lot)[0].parameters
        assert params["Temperature_C_trace_n"] >= 1
        assert params["Temperature_C_trace_min"] <= params["Temperature_C_trace_mean"]
        assert any(p.lot_id == lot for p in sink.point_list)
        assert await session.trace_init(1, 0.05, 0, [2010]) == 0  # TOTSMP 0 stops the trace


class GatedSink(RecordingSink):
    """A sink whose submit() waits until the test opens the gate (a slow durable store)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def submit(self, events: list) -> None:
        if any(isinstance(e, ProcessStarted) for e in events):
            self.waiting += 1
            await self.gate.wait()
        await super().submit(events)


async def test_event_is_acknowledged_only_after_the_sink_made_it_durable(
        sim: GemToolSim) -> None:
    sink = GatedSink()
    async with running(sim, sink) as session:
        acked_before = len(sim.acked)
        await _run_lot(session)
        await eventually(lambda: sink.waiting, what="submit called")
        await asyncio.sleep(0.3)  # give a wrong implementation time to ack early
        assert "S6F11 CEID 3001" not in sim.acked[acked_before:]
        sink.gate.set()
        await eventually(lambda: "S6F11 CEID 3001" in sim.acked[acked_before:],
                         what="S6F12 after durable")
        await eventually(lambda: sink.of(ProcessCompleted), what="lot completed")


async def test_an_event_unacknowledged_when_the_link_drops_is_delivered_again(
        sim: GemToolSim) -> None:
    sink = GatedSink()
    async with running(sim, sink) as session:
        first = session.state.connects_total
        # The lot ends after the reconnect's start-up. One that ends while the host
        # redefines its reports (events disabled) goes unreported, as on any GEM tool;
        # the daemon then finds the tool idle and holds the lot (tests/daemon).
        sim.hold_process()
        lot = await _run_lot(session)
        await eventually(lambda: sink.waiting, what="ProcessStarted being made durable")
        await sim.drop_connection()  # the S6F12 can no longer be sent
        await session.wait_for(lambda s: not s.communicating, 60)
        sink.gate.set()
        await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
        # At least once: the tool spooled what we never acknowledged and sent it again.
        await eventually(lambda: len([e for e in sink.of(ProcessStarted)
                                      if e.lot_id == lot]) == 2, what="ProcessStarted again")
        assert "S6F11 CEID 3001" in sim.acked
        sim.release_process()
        await eventually(lambda: _completed(sink, lot), what="lot completed after the drop")
        assert _completed(sink, lot)[0].ok


class E10GatedSink(RecordingSink):
    """A sink that holds E10 state changes until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def submit(self, events: list) -> None:
        if any(isinstance(e, E10StateChanged) and e.reason == "held" for e in events):
            await self.gate.wait()
        await super().submit(events)


async def test_tool_reports_its_t3_expiry_with_s9f9_and_the_session_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = E10GatedSink()
    async with GemToolSim(GemToolSimConfig(tool_id="SIM01", t3_reply_timeout_s=1.0)) as tool:
        async with running(tool, sink) as session:
            await tool.set_e10("engineering", "held")  # its S6F12 waits for the durable store
            # E5: the tool's T3 expires and it sends S9F9 with the header of its S6F11
            await eventually(lambda: [r for r in caplog.records if "SIM01" in r.getMessage()
                                      and "S9F9 about <S6F11 W" in r.getMessage()],
                             what="S9F9 about the S6F11 at the host")
            sink.gate.set()
            await eventually(lambda: "S6F11 CEID 3003" in tool.acked, what="event acknowledged")
            assert session.state.communicating
            assert (await session.read_status([1003]))[1003] == "engineering"


async def test_tool_drops_the_connection_mid_transaction_and_the_host_resyncs(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        first = session.state.connects_total
        sim.drop_on(2, 41)
        with pytest.raises(GemNotCommunicatingError):
            await session.command(RemoteCommand.PP_SELECT, {"PPID": "ETCH-A"})
        await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
        assert sim.enabled_ceids == [3001, 3002, 3003, 3004, 3005]
        lot = await _run_lot(session)
        await eventually(lambda: _completed(sink, lot), what="lot after reconnect")


async def test_power_cycled_tool_is_back_in_sync_without_anyone_touching_it(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        first = session.state.connects_total
        await sim.power_cycle()  # every report, link and alarm enable is gone on the tool
        await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
        assert sim.enabled_ceids == [3001, 3002, 3003, 3004, 3005]
        assert sim.enabled_alids == [5001, 5002, 5003]
        lot = await _run_lot(session)
        await eventually(lambda: _completed(sink, lot), what="lot after power cycle")


async def test_t3_timeout_fails_the_request_but_not_the_session(sim: GemToolSim) -> None:
    async with running(sim, hsms_t3=1.0) as session:
        sim.reply_delay_s = 3.0
        with pytest.raises(GemTimeoutError):
            await session.read_status([1001])
        sim.reply_delay_s = 0.0
        # The late S1F4 arrives with system bytes nobody waits for any more: dropped,
        # and the session goes on (a request may still meet the tail of the delay: retry).

        async def answered() -> bool:
            try:
                return (await session.read_status([1002]))[1002] == 0
            except GemTimeoutError:
                return False

        await eventually(answered, what="a later request answered")
        assert session.state.communicating


async def test_odd_frames_from_the_tool_get_s9_answers_and_the_session_survives(
        sim: GemToolSim) -> None:
    async with running(sim) as session:
        before = session.state.connects_total
        seen = len(sim.received)
        # A reply nobody asked for (unknown system bytes): logged and dropped.
        await sim.send_raw(hsms_frame(1, 4, encode(L(A("x"))), system=0x7EADBEEF, wbit=False))
        # Malformed item: an A item that claims 200 bytes but carries 3 → S9F7.
        await sim.send_raw(hsms_frame(6, 11, bytes([0x41, 200]) + b"abc", system=0x7E000001))
        # Well-formed SECS-II but not an S6F11 shape → S9F7 from the GEM layer.
        await sim.send_raw(hsms_frame(6, 11, encode(L(U4(1))), system=0x7E000002))
        # Unknown stream → S9F3; unknown function → S9F5; wrong device id → S9F1.
        await sim.send_raw(hsms_frame(99, 1, b"", system=0x7E000003))
        await sim.send_raw(hsms_frame(6, 99, b"", system=0x7E000004))
        await sim.send_raw(hsms_frame(1, 1, b"", system=0x7E000005, session_id=7))
        await eventually(
            lambda: {(9, 1), (9, 3), (9, 5)} <= set(sim.received[seen:])
            and sim.received[seen:].count((9, 7)) >= 2, what="S9F1/3/5/7 at the tool")
        assert session.state.communicating and session.state.connects_total == before
        assert (await session.read_status([1002]))[1002] == 0


async def test_oversize_length_field_closes_and_the_host_reconnects(sim: GemToolSim) -> None:
    async with running(sim) as session:
        before = session.state.connects_total
        await sim.send_raw(struct.pack(">I", 0x7FFFFFF0) + b"\x00" * 10)
        await session.wait_for(lambda s: s.communicating and s.connects_total > before, 60)
        assert (await session.read_status([1001]))[1001] == 5


async def test_events_spooled_while_no_host_was_connected_arrive_after_reconnect(
        sim: GemToolSim) -> None:
    async with running(sim):
        pass  # the tool now has our reports linked and enabled, and nobody listens
    await eventually(lambda: not sim.communicating, what="the tool sees the host gone")
    await sim.set_e10("engineering", "PM kit swap")
    await eventually(lambda: sim.spooled >= 1, what="event spooled")
    sink = RecordingSink()
    # A generous quiet window, so the order below holds on a loaded machine too.
    async with running(sim, sink, spool_settle_s=2.0) as session:
        await eventually(lambda: any(e.reason == "PM kit swap"
                                     for e in sink.of(E10StateChanged)), what="spooled event")
        assert session.state.spooled_requested and sim.spooled == 0
        # The status read comes after the spool: the last word is the current state.
        await eventually(lambda: sink.of(ToolConnected), what="ToolConnected")
        assert sink.of(E10StateChanged)[-1].reason == "status read at connect"
        assert session.state.e10 is E10State.ENGINEERING
        await sim.set_e10("standby", "PM done")
        await eventually(lambda: session.state.e10 is E10State.STANDBY, what="standby again")


async def test_connect_reports_the_lot_the_tool_runs_for_the_daemon_to_check(
        sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        await eventually(lambda: sink.of(ToolConnected), what="ToolConnected")
        assert sink.of(ToolConnected)[-1].running_lot == ""  # idle
        sim.process_time_s = 60.0
        lot = await _run_lot(session)
        await eventually(lambda: any(e.lot_id == lot for e in sink.of(ProcessStarted)),
                         what="ProcessStarted")
        first = session.state.connects_total
        await sim.drop_connection()
        await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
        await eventually(lambda: len(sink.of(ToolConnected)) >= 2, what="ToolConnected again")
        again = sink.of(ToolConnected)[-1]
        assert (again.running_lot, again.running_recipe) == (lot, "ETCH-A")
        assert (await session.command(RemoteCommand.ABORT, {})).code == 0  # idle for the next
        await eventually(lambda: _completed(sink, lot), what="the lot aborted")


class SlowE10Sink(RecordingSink):
    """A sink slow to make one E10 change durable (a slow disk, a busy store)."""

    async def submit(self, events: list) -> None:
        if any(isinstance(e, E10StateChanged) and e.reason == "while away" for e in events):
            await asyncio.sleep(1.2)
        await super().submit(events)

    def order(self) -> tuple[int, int, int]:
        """Where the slow E10 change, the completion and ToolConnected arrived."""
        kinds = [e.reason if isinstance(e, E10StateChanged) else type(e) for e in self.events]
        return (kinds.index("while away"), kinds.index(ProcessCompleted),
                kinds.index(ToolConnected))


async def _lot_done_while_away(sim: GemToolSim) -> None:
    """A lot the tool finished while no host listened, an E10 change spooled ahead of its end."""
    sim.process_time_s = 4.0
    starts = sim.acked.count("S6F11 CEID 3001")
    async with running(sim) as session:
        lot = await _run_lot(session)
        await eventually(lambda: sim.acked.count("S6F11 CEID 3001") > starts,
                         what="start acknowledged")
    await eventually(lambda: not sim.communicating, what="the tool sees the host gone")
    await sim.set_e10("engineering", "while away")
    await eventually(lambda: [d for d in sim.lots_done if d[0] == lot], what="lot done")


async def test_what_runs_is_reported_after_the_whole_spool_even_when_the_sink_is_slow(
        sim: GemToolSim) -> None:
    """The tool sends its next spooled message once the last was acknowledged: a quiet
    time counted from the last arrival ended while fabd was still storing one, and the
    status read ("idle") overtook a spooled completion: fabd would hold a lot that did
    finish."""
    await _lot_done_while_away(sim)
    sink = SlowE10Sink()
    async with running(sim, sink, spool_settle_s=1.0):
        await eventually(lambda: sink.of(ToolConnected) and sink.of(ProcessCompleted),
                         what="ToolConnected and the spooled completion")
        slow, completed, connected = sink.order()
        assert slow < completed < connected
        assert sink.of(ToolConnected)[0].running_lot == ""


async def test_what_runs_is_reported_after_the_spool_of_a_tool_tracing_faster_than_settle(
        sim: GemToolSim, caplog: pytest.LogCaptureFixture) -> None:
    """Trace data every 50 ms kept a 0.5 s quiet time from ever coming: the session gave
    up and did not say what runs, so the daemon never reconciled the tool."""
    caplog.set_level(logging.INFO, logger="fabd.gem")
    await _lot_done_while_away(sim)
    sink = SlowE10Sink()
    async with running(sim, sink, spool_settle_s=0.5, trace_period_s=0.05) as session:
        await eventually(lambda: sink.of(ToolConnected) and sink.of(ProcessCompleted),
                         what="ToolConnected and the spooled completion")
        slow, completed, connected = sink.order()
        assert slow < completed < connected
        assert sink.of(ToolConnected)[0].running_lot == ""
        assert sim.traces_sent > 10
        assert not [r for r in caplog.records if "still arriving" in r.getMessage()]
        assert await session.trace_init(1, 0.05, 0, [2010]) == 0  # TOTSMP 0: stop it


async def test_what_runs_is_reported_when_the_spool_does_not_settle_within_the_drain_limit(
        sim: GemToolSim, caplog: pytest.LogCaptureFixture) -> None:
    """A tool that never goes quiet was never reconciled; now it is after
    spool_drain_max_s, and the spooled completion behind still reaches the daemon."""
    caplog.set_level(logging.INFO, logger="fabd.gem")
    await _lot_done_while_away(sim)
    sink = SlowE10Sink()
    async with running(sim, sink, spool_settle_s=0.1, spool_drain_max_s=0.4):
        await eventually(lambda: sink.of(ToolConnected) and sink.of(ProcessCompleted),
                         what="ToolConnected and the spooled completion")
        assert sink.order()[0] < sink.order()[1]
        assert sink.of(ToolConnected)[0].running_lot == ""  # compared: the tool is idle
        assert [r for r in caplog.records if "still arriving" in r.getMessage()
                and "SIM01" in r.getMessage()]


def test_what_runs_is_read_from_the_status_without_guessing(sim: GemToolSim) -> None:
    import msgspec

    from equipment.gem.profile import FABD_SIM

    def running_lot(status: dict, **profile: object) -> str | None:
        session = GemHostSession(_config(sim), RecordingSink(),
                                 msgspec.structs.replace(FABD_SIM, **profile))
        return session._running_lot(status)

    assert running_lot({1002: 2, 1006: "L1"}) == "L1"
    assert running_lot({1002: 0, 1006: "L1"}) == ""       # idle, the last lot id kept
    assert running_lot({1002: 0, 1006: ""}) == ""
    assert running_lot({1002: 1, 1006: ""}) is None       # busy with which lot?
    assert running_lot({1002: 2}, vid_current_lot=0) is None
    assert running_lot({1002: 0}, vid_current_lot=0) == ""
    assert running_lot({1006: "L1"}, vid_process_state=0) == "L1"
    assert running_lot({1006: ""}, vid_process_state=0) == ""
    assert running_lot({1002: 0, 1006: "L1"}, process_idle_values=[]) == "L1"
    assert running_lot({}, vid_process_state=0, vid_current_lot=0) is None


async def test_establish_communications_is_retried_until_the_tool_accepts(
        sim: GemToolSim) -> None:
    sim.refuse_communication(2)
    seen = len(sim.received)
    async with running(sim) as session:
        assert sim.received[seen:].count((1, 13)) >= 3
        assert session.state.control is ControlState.ONLINE_REMOTE


async def test_control_state_follows_the_operator_and_gates_commands(sim: GemToolSim) -> None:
    sink = RecordingSink()
    async with running(sim, sink) as session:
        try:
            await sim.set_control("online_local")
            await session.wait_for(lambda s: s.control is ControlState.ONLINE_LOCAL, 60)
            refused = await session.command(RemoteCommand.PP_SELECT, {"PPID": "ETCH-A"})
            assert (refused.accepted, refused.code) == (False, 2)
        finally:
            await sim.set_control("online_remote")
        await session.wait_for(lambda s: s.control is ControlState.ONLINE_REMOTE, 60)
        assert (await session.command(RemoteCommand.PP_SELECT, {"PPID": "ETCH-A"})).code == 0
        states = [e.state for e in sink.of(ControlStateChanged)]
        assert states[-2:] == [ControlState.ONLINE_LOCAL, ControlState.ONLINE_REMOTE]


async def test_a_tool_without_clock_trace_or_spool_support_still_comes_online(
        sim: GemToolSim) -> None:
    sim.unsupported = {(2, 31), (2, 23), (6, 23)}
    try:
        async with running(sim, trace_period_s=0.1) as session:
            assert session.state.control is ControlState.ONLINE_REMOTE
            assert not session.state.spooled_requested
            assert sim.enabled_ceids == [3001, 3002, 3003, 3004, 3005]
    finally:
        sim.unsupported = set()


async def test_spooled_events_can_be_purged_instead() -> None:
    # A tool of its own: the module's tool may still hold (or be spooling) an earlier test's
    # events, and "spooled" must mean this test's event (waiting for "anything spooled" passed
    # at once on the tool's own disconnect event, and under load purged before ours arrived).
    sim = GemToolSim(GemToolSimConfig(tool_id="SIM02", process_time_s=0.3,
                                      t3_reply_timeout_s=30.0))
    await sim.start()
    try:
        async with running(sim):
            pass
        await eventually(lambda: not sim.communicating, what="the tool sees the host gone")
        # what the tool spooled about the host leaving is already there; wait for our event
        await eventually(lambda: sim.handler._outbox.empty(), what="the tool's queue sent")
        before = sim.spooled
        await sim.set_e10("scheduled_down", "to be purged")
        await eventually(lambda: sim.spooled > before, what="event spooled")
        sink = RecordingSink()
        async with running(sim, sink, request_spooled=False) as session:
            assert await session.spooled_data(purge=True) == 0
            assert sim.spooled == 0
            assert await session.spooled_data() == 2  # RSDA 2: nothing left to send
            await sim.set_e10("standby", "purged")
            await eventually(lambda: session.state.e10 is E10State.STANDBY, what="standby")
            assert not any(e.reason == "to be purged" for e in sink.of(E10StateChanged))
    finally:
        await sim.stop()


async def test_commands_while_disconnected_fail_fast(sim: GemToolSim) -> None:
    session = GemHostSession(_config(sim), RecordingSink())
    with pytest.raises(GemNotCommunicatingError):
        await session.command(RemoteCommand.STOP, {})


class HeldE10Sink(E10GatedSink):
    """E10GatedSink that counts the submits waiting at its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def submit(self, events: list) -> None:
        if any(isinstance(e, E10StateChanged) and e.reason == "held" for e in events):
            self.waiting += 1
        await super().submit(events)


async def test_a_link_loss_while_the_inbox_is_full_still_reaches_the_daemon(
        sim: GemToolSim) -> None:
    """inbox_max bounds the tool's primaries; ToolDisconnected was put on the same bounded
    queue and silently dropped when it was full (a slow store), so the daemon never heard
    that the tool went away."""
    sink = HeldE10Sink()
    async with running(sim, sink, inbox_max=1) as session:
        first = session.state.connects_total
        try:
            await sim.set_e10("engineering", "held")  # the worker waits on the store
            await eventually(lambda: sink.waiting, what="S6F11 being made durable")
            terminal = asyncio.create_task(sim.send_terminal("fills the inbox"))
            await eventually(lambda: session._inbox.qsize() >= 1, what="inbox full")
            await sim.drop_connection()
            await session.wait_for(lambda s: not s.communicating, 60)
            sink.gate.set()
            await session.wait_for(lambda s: s.communicating and s.connects_total > first, 60)
            await eventually(lambda: len(sink.of(ToolConnected)) >= 2, what="ToolConnected")
            assert sink.of(ToolDisconnected), "the link loss never reached the daemon"
            kinds = [type(e) for e in sink.events]
            assert kinds.index(ToolDisconnected) < len(kinds) - 1 - kinds[::-1].index(
                ToolConnected)
            await terminal
        finally:
            sink.gate.set()
            await sim.set_e10("standby", "test done")


def test_a_drain_limit_below_the_settle_time_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="spool_drain_max_s"):
        GemToolConfig(tool_id="T", spool_settle_s=5.0, spool_drain_max_s=1.0)
