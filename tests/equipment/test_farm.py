"""The equipment farm answers a real GEM host over real HSMS sockets, with the fabd-sim numbering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from equipment.events import (
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
    RecordingSink,
    RemoteCommand,
)
from equipment.hsms import (
    HsmsActive,
    HsmsConfig,
    HsmsSession,
    HsmsState,
    HsmsStream9Error,
    Message,
)
from equipment.secs import BOOLEAN, U1, U4, A, B, L, to_python
from equipment.sim.farm import EquipmentFarm, FarmConfig
from tests.support import eventually

FAST = dict(e37_ranges=False, t3_reply_timeout_s=5.0, t5_connect_separation_s=0.05,
            t6_control_timeout_s=5.0, t7_not_selected_timeout_s=5.0, linktest_interval_s=0.0,
            reconnect_backoff_max_s=0.2)


@contextlib.asynccontextmanager
async def farm_running(**over: object) -> AsyncIterator[EquipmentFarm]:
    farm = EquipmentFarm(FarmConfig(**{"tools": 3, "process_time_s": 0.2, **over}))
    await farm.start()
    task = asyncio.create_task(farm.run(), name="test.farm")
    try:
        yield farm
    finally:
        farm.stop()
        await asyncio.wait_for(task, 5)


class Host:
    """A bare GEM host on our HSMS layer that records what the tool sends and acks it."""

    def __init__(self, port: int) -> None:
        self.received: list[Message] = []
        self.hsms = HsmsActive("T", HsmsConfig(**{**FAST, "port": port}), self.on_message)

    def on_message(self, session: HsmsSession, msg: Message) -> None:
        self.received.append(msg)
        if msg.wbit:
            session.reply_nowait(msg, B(b"\x00"))

    def events(self, ceid: int) -> list[list]:
        return [to_python(m.body) for m in self.received
                if (m.stream, m.function) == (6, 11) and m.body[1] == U4(ceid)]

    async def __aenter__(self) -> Host:
        self.task = asyncio.create_task(self.hsms.run(), name="test.host")
        await self.hsms.wait_state(HsmsState.SELECTED, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hsms.stop()
        await asyncio.wait_for(self.task, 5)

    async def ack(self, stream: int, function: int, body: object = None) -> object:
        """Return the reply as plain values; a one-byte B code (COMMACK, HCACK...) as an int."""
        value = to_python((await self.hsms.request(stream, function, body)).body)
        return value[0] if isinstance(value, bytes) and len(value) == 1 else value

    async def start_up(self) -> None:
        """The E30 host start-up, with the fabd-sim report layout."""
        assert await self.ack(1, 13, L()) == [b"\x00", ["FABD-FARM", "1.0"]]
        assert await self.ack(1, 17) == 0
        assert await self.ack(2, 31, A("2026112512000000")) == 0
        assert await self.ack(2, 37, L(BOOLEAN(False), L())) == 0
        assert await self.ack(2, 33, L(U4(1), L())) == 0
        assert await self.ack(2, 33, L(U4(2), L(
            L(U4(3001), L(U4(2001), U4(2002))),
            L(U4(3002), L(U4(2001), U4(2002), U4(2010), U4(2011), U4(2012), U4(2013),
                          U4(2004))),
            L(U4(3003), L(U4(1003), U4(2003))),
            L(U4(3004), L(U4(1001))), L(U4(3005), L(U4(1004)))))) == 0
        assert await self.ack(2, 35, L(U4(3), L(*(L(U4(c), L(U4(c))) for c in range(3001, 3006))))) == 0
        assert await self.ack(2, 37, L(BOOLEAN(True), L())) == 0
        assert await self.ack(5, 3, L(B(b"\x80"), U4())) == 0


async def test_gem_start_up_status_and_a_lot_run() -> None:
    async with farm_running() as farm, Host(farm.tools[1].port) as host:
        await host.start_up()
        tool = farm.tools[1]
        assert tool.control_state == 5 and tool.enabled_ceids == {3001, 3002, 3003, 3004, 3005}
        status = await host.ack(1, 3, L(U4(1001), U4(1002), U4(1003), U4(1004), U4(1005), U4(1006)))
        assert status[:4] == [5, 0, "standby", ""] and len(status[4]) == 16
        assert await host.ack(7, 19) == ["RCP-ETCH-01", "RCP-DEP-02", "RCP-LITHO-03"]
        # START before PP-SELECT: cannot do now
        assert (await host.ack(2, 41, L(A("START"), L(L(A("LOTID"), A("LOT-1"))))))[0][0] == 2
        assert (await host.ack(2, 41, L(A("PP-SELECT"), L(L(A("PPID"), A("NOPE"))))))[0][0] == 3
        assert (await host.ack(2, 41, L(A("PP-SELECT"), L(L(A("PPID"), A("RCP-DEP-02"))))))[0][0] == 0
        assert (await host.ack(2, 41, L(A("START"), L())))[0][0] == 3  # LOTID missing
        assert (await host.ack(2, 41, L(A("FLY"), L())))[0][0] == 1
        assert (await host.ack(2, 41, L(A("START"), L(L(A("LOTID"), A("LOT-1"))))))[0][0] == 4
        await eventually(lambda: host.events(3002), what="CE 3002 ProcessCompleted")
        _dataid, _ceid, reports = host.events(3002)[0]
        rptid, values = reports[0]
        assert rptid == 3002 and values[:2] == ["LOT-1", "RCP-DEP-02"]
        assert abs(values[2] - 350.0) < 10 and values[6] in (0, 1)
        assert host.events(3001)[0][2] == [[3001, ["LOT-1", "RCP-DEP-02"]]]
        assert [e[2][0][1][0] for e in host.events(3003)] == ["productive", "standby"]
        assert host.events(3005)[0][2] == [[3005, ["RCP-DEP-02"]]]


async def test_recipes_upload_download_delete_alarms_terminal_and_unknown_functions() -> None:
    async with farm_running() as farm, Host(farm.tools[0].port) as host:
        await host.start_up()
        assert await host.ack(7, 3, L(A("NEW"), B(b"\x01\x02"))) == 0
        assert await host.ack(7, 5, A("NEW")) == ["NEW", b"\x01\x02"]
        assert await host.ack(7, 17, L(A("NEW"))) == 0
        assert await host.ack(7, 5, A("NEW")) == []
        assert await host.ack(7, 17, L(A("NEW"))) == 4
        assert await host.ack(10, 3, L(B(b"\x00"), A("hello"))) == 0
        assert await host.ack(2, 13, L(U4(1))) == [[]]
        await farm.tools[0].raise_alarm(5003)
        s5f1 = [m for m in host.received if (m.stream, m.function) == (5, 1)]
        assert s5f1[0].body == L(B(b"\x84"), U4(5003), A("door interlock"))
        await farm.tools[0].clear_alarm(5003)
        assert host.received[-1].body[0] == B(b"\x04")
        # the tool answers S9F5/S9F3 to what it does not know; our host fails the request at once
        with pytest.raises(HsmsStream9Error) as err:
            await host.hsms.request(2, 99, L())
        assert err.value.s9_function == 5
        with pytest.raises(HsmsStream9Error) as err:
            await host.hsms.request(77, 1, L())
        assert err.value.s9_function == 3


async def test_malformed_structure_gets_s9f7_and_the_tool_stays_up() -> None:
    async with farm_running() as farm, Host(farm.tools[0].port) as host:
        with pytest.raises(HsmsStream9Error) as err:
            await host.hsms.request(2, 33, U1(7))  # S2F33 must be a list
        assert err.value.s9_function == 7
        assert await host.ack(1, 13, L()) == [b"\x00", ["FABD-FARM", "1.0"]]


async def test_the_gem_host_session_drives_a_farm_tool_end_to_end() -> None:
    gem = pytest.importorskip("equipment.gem")
    sink = RecordingSink()
    async with farm_running() as farm:
        cfg = gem.GemToolConfig(tool_id="SIM0002", hsms=HsmsConfig(
            **{**FAST, "port": farm.tools[2].port}), comm_retry_s=0.2, spool_settle_s=0.05)
        session = gem.GemHostSession(cfg, sink)
        task = asyncio.create_task(session.run(), name="test.gem")
        try:
            await session.wait_for(lambda s: s.communicating, timeout_s=10)
            assert (await session.command(RemoteCommand.PP_SELECT, {"PPID": "RCP-ETCH-01"})).accepted
            result = await session.command(RemoteCommand.START, {"LOTID": "LOT-9"})
            assert result.accepted and result.code == 4
            await eventually(lambda: sink.of(ProcessCompleted), what="ProcessCompleted event")
            assert sink.of(ProcessStarted)[0].lot_id == "LOT-9"
            assert sink.of(ProcessCompleted)[0].lot_id == "LOT-9"
            assert any(e.state == "productive" for e in sink.of(E10StateChanged))
            assert await session.recipe_upload("RCP-ETCH-01")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_load_mode_emits_events_and_measures_ack_latency() -> None:
    async with farm_running(tools=4, event_rate_hz=50.0) as farm:
        hosts = [Host(t.port) for t in farm.tools]
        async with contextlib.AsyncExitStack() as stack:
            for h in hosts:
                await stack.enter_async_context(h)
            await eventually(lambda: farm.stats.acked >= 40, what="40 acknowledged events")
        summary = farm.stats.summary()
        assert summary["p99_ms"] > 0 and summary["sent"] >= summary["acked"] >= 40
        # without host report definitions the load event is the typical 2 x 10 value S6F11
        body = hosts[0].received[0].body
        assert len(body[2]) == 2 and len(body[2][0][1]) == 10


def test_farm_command_line_prints_ports_and_stats() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "equipment.sim.farm", "--tools", "3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert len(ready["ports"]) == 3 and ready["tools"][0] == "SIM0000"
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        stats = json.loads(proc.stdout.readline())
        assert stats["selected"] == 0 and "cpu_s" in stats
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        proc.kill()


async def test_events_while_the_host_is_away_are_spooled_and_sent_on_s6f23() -> None:
    async with farm_running() as farm:
        tool = farm.tools[0]
        async with Host(tool.port) as host:
            await host.start_up()
        await eventually(lambda: tool.session is None, what="host gone")
        await tool.set_e10("unscheduled_down", "pump fault")
        await tool.set_e10("standby", "repaired")
        async with Host(tool.port) as host:
            assert await host.ack(6, 23, U1(0)) == 0
            await eventually(lambda: len(host.events(3003)) == 2, what="two spooled CE 3003")
            assert [e[2][0][1] for e in host.events(3003)] == [
                ["unscheduled_down", "pump fault"], ["standby", "repaired"]]
            assert await host.ack(6, 23, U1(0)) == 2  # nothing left


async def test_trace_request_sends_s6f1_samples() -> None:
    async with farm_running() as farm, Host(farm.tools[0].port) as host:
        await host.start_up()
        # TRID 7, DSPER 0.05 s (hhmmsscc), 3 samples, one per S6F1, of temperature and pressure
        assert await host.ack(2, 23, L(U4(7), A("00000005"), U4(3), U4(1),
                                       L(U4(2010), U4(2011)))) == 0
        await eventually(lambda: len([m for m in host.received if m.stream == 6
                                      and m.function == 1]) == 3, what="3 trace reports")
        s6f1 = [to_python(m.body) for m in host.received if (m.stream, m.function) == (6, 1)]
        assert [r[1] for r in s6f1] == [1, 2, 3] and all(len(r[3]) == 2 for r in s6f1)
        assert await host.ack(2, 23, L(U4(8), A("bad"), U4(1), U4(1), L(U4(2010)))) == 1


def test_farm_command_line_stops_on_sigterm_without_stdin() -> None:
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "equipment.sim.farm", "--tools", "2",
                             "--no-stdin"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert len(json.loads(proc.stdout.readline())["ports"]) == 2
        assert proc.poll() is None  # /dev/null on stdin does not stop it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
