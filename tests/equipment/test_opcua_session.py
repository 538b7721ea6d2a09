"""OPC UA adapter against a real asyncua server (the simulated tool), with and without security."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from daemon.errors import RetryableError
from equipment import metrics
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
    ToolConnected,
    ToolDisconnected,
)
from equipment.opcua import session as session_module
from equipment.opcua.config import OpcUaSecurity, OpcUaToolConfig
from equipment.opcua.errors import OpcUaCommandError, OpcUaConfigError
from equipment.opcua.session import OpcUaSession, OpcUaSessionState
from equipment.sim.opcua_tool import OpcUaToolSim, OpcUaToolSimConfig, make_certificate
from tests.support import eventually as _eventually
from tests.support import new_workdir


def eventually(predicate, timeout_s: float = 30.0, **kw):
    """tests.support.eventually with a deadline that suits a busy shared machine."""
    return _eventually(predicate, timeout_s=timeout_s, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[OpcUaToolSim]:
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="ETCH01", process_time_s=0.6,
                                           sample_interval_s=0.05))
    await tool.start()
    yield tool
    await tool.close()


class Running:
    """A session running as a named task for the length of a test."""

    def __init__(self, session: OpcUaSession) -> None:
        self.session = session
        self.task = asyncio.create_task(session.run(), name=f"opcua[{session.tool_id}]")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        await r.stop()


def start(running: list[Running], config: OpcUaToolConfig, sink: RecordingSink) -> OpcUaSession:
    session = OpcUaSession(config, sink, seed=1)
    running.append(Running(session))
    return session


async def test_a_lot_run_arrives_as_domain_events_and_spc_points(sim, running) -> None:
    sink = RecordingSink()
    session = start(running, sim.client_profile(), sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: sink.of(E10StateChanged), what="initial E10 state")
    assert sink.of(E10StateChanged)[0].state is E10State.STANDBY
    assert sink.of(ToolConnected)[0].peer == sim.endpoint_url
    assert isinstance(sink.events[0], ToolConnected)  # before the initial values

    result = await session.command(RemoteCommand.START, {"LOTID": "LOT-7", "PPID": "ETCH-B"})
    assert result.accepted and result.code == 0
    assert ("Start", ("LOT-7", "ETCH-B")) in sim.calls  # the command reached the tool

    done = await eventually(lambda: sink.of(ProcessCompleted), what="lot completed")
    started = sink.of(ProcessStarted)
    assert [(e.lot_id, e.recipe_id) for e in started] == [("LOT-7", "ETCH-B")]
    assert done[0].lot_id == "LOT-7" and done[0].recipe_id == "ETCH-B"
    assert 1100 < done[0].parameters["rf_power_w"] < 1300  # the run's mean, not the idle 0
    states = [e.state for e in sink.of(E10StateChanged)]
    assert states == [E10State.STANDBY, E10State.PRODUCTIVE, E10State.STANDBY]
    lot_points = [p for p in sink.point_list if p.lot_id == "LOT-7"]
    assert lot_points == sink.point_list  # idle values (zeros, setpoints) are not SPC data
    assert {p.parameter for p in lot_points} == {"chamber_pressure_mtorr", "rf_power_w",
                                                 "chuck_temperature_c"}
    assert all(p.tool_id == "ETCH01" for p in lot_points)
    assert 30 < sum(p.value for p in lot_points if p.parameter == "chamber_pressure_mtorr") / \
        len([p for p in lot_points if p.parameter == "chamber_pressure_mtorr"]) < 40
    await eventually(lambda: session.status.get("lots_processed") == 1, what="status variable")


async def test_alarms_boolean_and_code_nodes(sim, running) -> None:
    sink = RecordingSink()
    session = start(running, sim.client_profile(), sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    await sim.set_alarm(1001, True)
    await eventually(lambda: sink.of(AlarmSet), what="alarm set")
    await sim.set_alarm(1001, False)
    await sim.set_alarm_code(4711)
    await eventually(lambda: len(sink.of(AlarmSet)) == 2, what="code alarm set")
    await sim.set_alarm_code(0)
    await eventually(lambda: len(sink.of(AlarmCleared)) == 2, what="both alarms cleared")
    assert [(e.alid, e.text) for e in sink.of(AlarmSet)] == [(1001, "chamber door open"),
                                                             (4711, "")]
    assert [e.alid for e in sink.of(AlarmCleared)] == [1001, 4711]


async def test_refused_commands_map_to_hcack_and_reach_the_tool(sim, running) -> None:
    sink = RecordingSink()
    session = start(running, sim.client_profile(), sink)
    stop = await session.command(RemoteCommand.STOP, {})
    assert (stop.accepted, stop.code, stop.reason) == (False, 2, "not connected") or \
        session.state is OpcUaSessionState.CONNECTED
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)

    stop = await session.command(RemoteCommand.STOP, {})  # nothing running
    assert (stop.accepted, stop.code, stop.reason) == (False, 2, "BadInvalidState")
    bad = await session.command(RemoteCommand.PP_SELECT, {"PPID": "NO-SUCH"})
    assert (bad.accepted, bad.code) == (False, 3)
    missing = await session.command(RemoteCommand.START, {"LOTID": "L1"})
    assert (missing.accepted, missing.code) == (False, 3) and "PPID" in missing.reason
    pause = await session.command(RemoteCommand.PAUSE, {})
    assert (pause.accepted, pause.code) == (False, 1)
    assert ("Stop", ()) in sim.calls and ("SelectRecipe", ("NO-SUCH",)) in sim.calls

    ok = await session.command(RemoteCommand.PP_SELECT, {"PPID": "ETCH-B"})
    assert ok.accepted
    await eventually(lambda: session.recipe_id == "ETCH-B", what="recipe variable follows")


async def test_control_state_changes_and_local_mode_refuses_start(sim, running) -> None:
    sink = RecordingSink()
    session = start(running, sim.client_profile(), sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: sink.of(ControlStateChanged), what="initial control state")
    await sim.set_control_state(ControlState.ONLINE_LOCAL)
    await eventually(lambda: session.control_state is ControlState.ONLINE_LOCAL,
                     what="local mode seen")
    refused = await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})
    assert (refused.accepted, refused.code, refused.reason) == (False, 2, "BadInvalidState")
    await sim.set_control_state(ControlState.ONLINE_REMOTE)
    await eventually(lambda: len(sink.of(ControlStateChanged)) == 3, what="remote again")
    assert [e.state for e in sink.of(ControlStateChanged)] == [
        ControlState.ONLINE_REMOTE, ControlState.ONLINE_LOCAL, ControlState.ONLINE_REMOTE]
    assert (await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})
            ).accepted


async def test_recipes_list_upload_download(sim, running) -> None:
    session = start(running, sim.client_profile(), RecordingSink())
    if session.state is not OpcUaSessionState.CONNECTED:
        with pytest.raises(RetryableError):  # the daemon retries later
            await session.recipe_list()
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    with pytest.raises(OpcUaCommandError, match="BadNotFound"):
        await session.recipe_upload("NO-SUCH")
    assert await session.recipe_list() == ["ETCH-A", "ETCH-B"]
    assert await session.recipe_upload("ETCH-A") == b"recipe ETCH-A\n"
    assert await session.recipe_download("ETCH-C", b"\x00body")
    assert sim.recipe_bodies["ETCH-C"] == b"\x00body"
    assert "ETCH-C" in await session.recipe_list()


async def test_server_restart_is_survived_without_manual_action(sim, running, caplog) -> None:
    sink = RecordingSink()
    profile = sim.client_profile(watchdog_interval_s=0.3, reconnect_min_s=0.1,
                                 reconnect_max_s=0.5, idle_points=True)
    session = start(running, profile, sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    reconnects = metrics.RECONNECTS.labels("ETCH01", "opcua")._value.get()
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")

    await sim.stop()
    await eventually(lambda: sink.of(ToolDisconnected), what="loss noticed")
    await sim.start()
    await eventually(lambda: len(sink.of(ToolConnected)) == 2, what="reconnected")
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)

    # The re-created subscription delivers new values (idle_points: the tool is not running).
    await sim.set_parameter("rf_power_w", 777.0)
    await eventually(lambda: any(p.value == 777.0 for p in sink.point_list), what="new value")
    assert metrics.RECONNECTS.labels("ETCH01", "opcua")._value.get() == reconnects + 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name.startswith("equipment.")]
    assert len(warnings) == 1 and "ETCH01" in warnings[0].getMessage()
    assert any("ETCH01" in r.getMessage() and "up" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO and r.name.startswith("equipment."))


async def test_a_bad_quality_value_is_reported_not_taken_as_data(running, caplog) -> None:
    # A gateway that loses the PLC behind it reports its variables Bad with no value:
    # that says nothing about the lot or the alarm, so no track-out and no clear.
    caplog.set_level(logging.WARNING, logger="equipment.opcua.session")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="ETCH05", process_time_s=600,
                                           sample_interval_s=0.05))
    await tool.start()
    try:
        sink = RecordingSink()
        session = start(running, tool.client_profile(), sink)
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
        assert (await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})
                ).accepted
        await tool.set_alarm(1001, True)
        await eventually(lambda: sink.of(ProcessStarted) and sink.of(AlarmSet),
                         what="lot started, alarm set")

        def bad_reported() -> list[str]:
            return [r.getMessage() for r in caplog.records if "BadNoCommunication" in
                    r.getMessage()]

        await tool.set_bad_quality("LotId")
        await tool.set_bad_quality("Alarms.DoorOpen")
        await eventually(lambda: len(bad_reported()) >= 2 or sink.of(ProcessCompleted)
                         or sink.of(AlarmCleared), what="bad quality seen")
        assert not sink.of(ProcessCompleted) and not sink.of(AlarmCleared)
        assert any("ETCH05" in m and "LotId" in m for m in bad_reported())

        await tool.set_good_quality("LotId")
        await tool.set_good_quality("Alarms.DoorOpen")
        await tool.stop_lot()
        await eventually(lambda: sink.of(ProcessCompleted), what="lot completed")
        assert [e.lot_id for e in sink.of(ProcessStarted)] == ["L1"]
        assert [e.lot_id for e in sink.of(ProcessCompleted)] == ["L1"]
        assert not sink.of(AlarmCleared) and session.state is OpcUaSessionState.CONNECTED
    finally:
        await tool.close()


async def test_a_lot_that_ends_while_disconnected_keeps_its_recipe_and_data(running) -> None:
    # While fabd is away, L1 is aborted and L2 starts with another recipe. At reconnect the
    # initial values arrive at once: L1's completion must carry L1's recipe, and L2's
    # parameter values must not be charted (or averaged) as L1's.
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="ETCH06", process_time_s=600,
                                           sample_interval_s=0.05))
    await tool.start()
    try:
        sink = RecordingSink()
        session = start(running, tool.client_profile(watchdog_interval_s=0.3,
                                                     reconnect_min_s=0.1,
                                                     reconnect_max_s=0.5), sink)
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
        assert (await session.command(RemoteCommand.START, {"LOTID": "L1", "PPID": "ETCH-A"})
                ).accepted
        await eventually(lambda: len({p.parameter for p in sink.point_list
                                      if p.lot_id == "L1"}) == 3, what="L1's data")

        await tool.stop()
        await eventually(lambda: sink.of(ToolDisconnected), what="loss noticed")
        seen = len(sink.point_list)
        await tool.stop_lot()
        await tool.start_lot("L2", "ETCH-B")
        await tool.start()
        await eventually(lambda: sink.of(ProcessCompleted) and sink.of(ProcessStarted)[1:],
                         what="L1 completed, L2 started")

        (done,) = sink.of(ProcessCompleted)
        assert (done.lot_id, done.recipe_id) == ("L1", "ETCH-A")
        assert [(e.lot_id, e.recipe_id) for e in sink.of(ProcessStarted)] == [
            ("L1", "ETCH-A"), ("L2", "ETCH-B")]
        assert [p for p in sink.point_list[seen:] if p.lot_id == "L1"] == []
        # ToolConnected says what runs, read at connect (the record is checked against it),
        # and L1's end comes before it, so the record does not take L1 for lost
        first, again = sink.of(ToolConnected)
        assert (first.running_lot, again.running_lot, again.running_recipe) == ("", "L2",
                                                                                "ETCH-B")
        assert sink.events.index(done) < sink.events.index(again)
    finally:
        await tool.close()


async def test_a_profile_without_a_lot_node_does_not_say_what_runs(sim, running) -> None:
    sink = RecordingSink()
    profile = msgspec.structs.replace(sim.client_profile(), lot_id_node="")
    session = start(running, profile, sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    (connected,) = sink.of(ToolConnected)
    assert connected.running_lot is None


async def test_an_outage_is_logged_once_not_per_attempt_and_without_traceback(
        sim, running, caplog) -> None:
    caplog.set_level(logging.INFO)  # every logger: asyncua's too (fabd runs it at WARNING)
    profile = sim.client_profile(watchdog_interval_s=0.3, reconnect_min_s=0.02,
                                 reconnect_max_s=0.05)
    session = start(running, profile, RecordingSink())
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)

    def loud(records: list[logging.LogRecord]) -> list[str]:
        # asyncua.server is the simulated tool's side, not fabd's.
        return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING
                and not r.name.startswith("asyncua.server")]

    await sim.stop()
    await eventually(lambda: session.failed_attempts >= 1, what="first failed attempt")
    first, attempts = len(caplog.records), session.failed_attempts
    await eventually(lambda: session.failed_attempts >= attempts + 4,
                     what="four more failed attempts")
    assert loud(caplog.records[first:]) == []  # the outage was said once, before
    await sim.start()
    await eventually(lambda: session.connects == 2, what="reconnected")
    assert [r.name for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING
            and not r.name.startswith("asyncua.server")] == []  # no tracebacks


@pytest.fixture(scope="module")
def pki() -> dict[str, Path]:
    """A client certificate and key for the secure tests (generated once)."""
    workdir = new_workdir("opcua-pki")
    cert, key = asyncio.run(make_certificate(workdir, "client", "urn:fabd:test:client",
                                             server=False))
    (workdir / "password").write_text("wafer\n")
    yield {"dir": workdir, "cert": cert, "key": key, "password": workdir / "password"}
    shutil.rmtree(workdir, ignore_errors=True)


def trusting(pki: dict[str, Path], tool: OpcUaToolSim, name: str,
             mode: str = "SignAndEncrypt", **security: str) -> OpcUaSecurity:
    """Our certificate, and a trust store (pki dir / name) holding the tool's certificate."""
    trusted = pki["dir"] / name
    trusted.mkdir(exist_ok=True)
    shutil.copy(tool.server_cert_file, trusted / f"{tool.config.tool_id.lower()}.der")
    return OpcUaSecurity(policy="Basic256Sha256", mode=mode, client_cert_file=str(pki["cert"]),
                         client_key_file=str(pki["key"]), trusted_certs_dir=str(trusted),
                         **security)


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
async def test_secure_channel_with_user_password(pki, running, mode) -> None:
    clients = pki["dir"] / f"clients-{mode}"  # the tool trusts exactly our certificate
    clients.mkdir(exist_ok=True)
    shutil.copy(pki["cert"], clients / "fabd.der")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="CVD02", secure=True, username="fab",
                                           password="wafer", process_time_s=0.3,
                                           sample_interval_s=0.05,
                                           trusted_client_certs_dir=str(clients)))
    await tool.start()
    try:
        security = trusting(pki, tool, f"trusted-{mode}", mode, username="fab",
                            password_file=str(pki["password"]))
        sink = RecordingSink()
        session = start(running, tool.client_profile(security=security), sink)
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
        result = await session.command(RemoteCommand.START, {"LOTID": "LOT-S", "PPID": "ETCH-A"})
        assert result.accepted
        await eventually(lambda: sink.of(ProcessCompleted), what="secure lot completed")
        assert any(p.lot_id == "LOT-S" for p in sink.point_list)
    finally:
        await tool.close()


async def test_untrusted_server_certificate_is_refused(pki, running, caplog) -> None:
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="CVD03", secure=True))
    await tool.start()
    try:
        # Pin our own client certificate as "the server": the real server must be refused.
        security = OpcUaSecurity(
            policy="Basic256Sha256", mode="SignAndEncrypt", client_cert_file=str(pki["cert"]),
            client_key_file=str(pki["key"]), server_cert_file=str(pki["cert"]))
        sink = RecordingSink()
        session = start(running, tool.client_profile(security=security,
                                                     reconnect_min_s=0.2), sink)
        await eventually(lambda: session.failed_attempts >= 2, what="two refused attempts")
        assert session.connects == 0 and not sink.of(ToolConnected)
        errors = [r.getMessage() for r in caplog.records
                  if r.name.startswith("equipment.") and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "CVD03" in errors[0] and "BadCertificateUntrusted" in errors[0]
    finally:
        await tool.close()


def test_a_bad_profile_fails_when_decoded_with_its_key() -> None:
    raw = tomllib.loads("""
        tool_id = "T1"
        endpoint_url = "opc.tcp://127.0.0.1:4840"
        e10_state_node = "ns=2;s=T1.State"
        e10_state_values = { "1" = "productive", "2" = "standby" }
        parameters = [ { node_id = "ns=2;s=T1.Rf", parameter = "rf_power_w" } ]
        [commands.START]
        object_node = "ns=2;s=T1"
        method_node = "ns=2;s=T1.Start"
        args = ["LOTID", "PPID"]
    """)
    profile = msgspec.convert(raw, OpcUaToolConfig)
    assert profile.e10_state_values == {"1": E10State.PRODUCTIVE, "2": E10State.STANDBY}
    raw["parameters"].append({"node_id": "ns=2;q=oops", "parameter": "p"})
    with pytest.raises(msgspec.ValidationError, match=r"parameters\[1\]\.node_id: bad node id"):
        msgspec.convert(raw, OpcUaToolConfig)
    with pytest.raises(OpcUaConfigError, match="client_cert_file: required"):
        OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt")
    with pytest.raises(OpcUaConfigError, match="password_env: environment variable"):
        OpcUaSecurity(username="fab", password_env="FABD_SURELY_UNSET_VARIABLE")


def test_unreadable_certificate_and_key_files_fail_at_start_with_their_key(pki,
                                                                         tmp_path) -> None:
    # asyncua reads a file named *.pem as PEM and any other as DER; a file that exists but
    # cannot be read so used to pass validation and crash the session at its first connect.
    junk = tmp_path / "junk.der"
    junk.write_text("not a certificate\n")
    pem_named_der = tmp_path / "client.pem"
    pem_named_der.write_bytes(pki["cert"].read_bytes())  # DER bytes under a .pem name
    base = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
            "client_cert_file": str(pki["cert"]), "client_key_file": str(pki["key"]),
            "server_cert_file": str(pki["cert"])}
    OpcUaSecurity(**base)
    for key, path in (("client_cert_file", junk), ("client_cert_file", pem_named_der),
                      ("client_key_file", junk), ("server_cert_file", junk)):
        with pytest.raises(OpcUaConfigError, match=rf"^{key}: .*{path.name}"):
            OpcUaSecurity(**{**base, key: str(path)})


async def test_a_tool_that_does_not_trust_our_certificate_refuses_us(pki, running,
                                                                     caplog) -> None:
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")
    others = pki["dir"] / "others"
    stranger, _ = await make_certificate(others / "pki", "stranger", "urn:x:stranger",
                                         server=False)
    shutil.copy(stranger, others / "stranger.der")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="CVD04", secure=True,
                                           trusted_client_certs_dir=str(others)))
    await tool.start()
    try:
        security = trusting(pki, tool, "trusted-cvd04")
        session = start(running, tool.client_profile(security=security,
                                                     reconnect_min_s=0.2), RecordingSink())
        await eventually(lambda: session.failed_attempts >= 2, timeout_s=30,
                         what="two refused attempts")
        assert session.connects == 0
        errors = [r.getMessage() for r in caplog.records
                  if r.name.startswith("equipment.") and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "CVD04" in errors[0] and "BadCertificate" in errors[0]
    finally:
        await tool.close()


async def test_a_nan_or_infinite_parameter_is_reported_not_charted(sim, running, caplog) -> None:
    # A Double variable can hold NaN or ±inf (a sensor out of range, a PLC division by 0):
    # that is no measurement, and one NaN in a chart or a lot mean poisons it.
    caplog.set_level(logging.WARNING, logger="equipment.opcua.session")
    sink = RecordingSink()
    session = start(running, sim.client_profile(idle_points=True), sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    await sim.set_parameter("rf_power_w", float("nan"))
    await sim.set_parameter("rf_power_w", float("inf"))
    await sim.set_parameter("rf_power_w", 1201.0)
    await eventually(lambda: any(p.value == 1201.0 for p in sink.point_list), what="good value")
    rf = [p.value for p in sink.point_list if p.parameter == "rf_power_w"]
    assert rf == [0.0, 1201.0]  # the initial value, then the good one
    assert any("ETCH01" in r.getMessage() and "rf_power_w" in r.getMessage()
               for r in caplog.records)


async def test_a_link_drop_does_not_chart_the_same_sample_twice(sim, running) -> None:
    # After a network blip the new subscription's initial values are the samples already
    # charted (same source timestamp): charting them again doubles points in SPC.
    sink = RecordingSink()
    session = start(running, sim.client_profile(idle_points=True, watchdog_interval_s=0.3,
                                                reconnect_min_s=0.1, reconnect_max_s=0.5), sink)
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    await sim.set_parameter("rf_power_w", 777.0)
    await eventually(lambda: any(p.value == 777.0 for p in sink.point_list), what="sample")
    before = list(sink.point_list)
    assert session._client is not None
    session._client._client.disconnect_socket()  # the link drops; the server stays up
    await eventually(lambda: len(sink.of(ToolConnected)) == 2 and
                     session.state is OpcUaSessionState.CONNECTED, what="reconnected")
    await sim.set_parameter("rf_power_w", 778.0)
    await eventually(lambda: any(p.value == 778.0 for p in sink.point_list), what="new sample")
    keys = [(p.parameter, p.ts) for p in sink.point_list]
    assert len(keys) == len(set(keys)), "a sample charted twice"
    assert [p.value for p in sink.point_list[len(before):]] == [778.0]


async def test_a_server_certificate_changed_during_an_outage_is_reported(pki, running,
                                                                         caplog) -> None:
    # The tool controller reboots with a new certificate (renewed, or its PKI reset): fabd
    # can never reconnect until the certificate is trusted, and must say so, not only
    # "connection lost; reconnecting".
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="CVD07", secure=True))
    await tool.start()
    try:
        security = trusting(pki, tool, "trusted-cvd07")
        session = start(running, tool.client_profile(security=security, watchdog_interval_s=0.3,
                                                     reconnect_min_s=0.1, reconnect_max_s=0.3),
                        RecordingSink())
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
        await tool.stop()
        assert tool.server_cert_file is not None and tool.server_key_file is not None
        tool.server_cert_file.unlink()  # the next start makes a new certificate
        tool.server_key_file.unlink()
        await tool.start()
        seen = session.failed_attempts
        await eventually(lambda: session.failed_attempts >= seen + 2, what="refused attempts")
        errors = [r.getMessage() for r in caplog.records
                  if r.name.startswith("equipment.") and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "CVD07" in errors[0] and "BadCertificate" in errors[0]
    finally:
        await tool.close()


def test_a_node_given_two_roles_or_a_bad_queue_size_fails_with_its_key(sim) -> None:
    # One node in two roles kept only the last: here the chamber pressure would never be
    # charted, its values read as a lot id instead (a lot started and ended at every sample).
    profile = sim.client_profile()
    pressure = sim.node_id("chamber_pressure_mtorr")
    with pytest.raises(OpcUaConfigError, match=r"^parameters\[0\]\.node_id: .*already "
                                               r"lot_id_node"):
        msgspec.structs.replace(profile, lot_id_node=pressure)
    with pytest.raises(OpcUaConfigError, match=r"^queue_size: must be >= 0"):
        msgspec.structs.replace(profile, queue_size=-1)


class ShortLivedLink:
    """A TCP relay to the tool that cuts every connection `life_s` after it opened.

    What drops a session as soon as it is up: a server at its session limit that closes
    the channel, a firewall or NAT that resets connections.
    """

    def __init__(self, tool: OpcUaToolSim, life_s: float) -> None:
        self.tool = tool
        self.life_s = life_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def endpoint_url(self) -> str:
        return self.tool.endpoint_url.replace(f":{self.tool.port}/", f":{self.port}/")

    async def __aenter__(self) -> ShortLivedLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._tasks)  # each ends by itself within life_s

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.tool.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        try:
            async with asyncio.timeout(self.life_s), asyncio.TaskGroup() as tg:
                tg.create_task(pipe(reader, up_writer), name="link-up")
                tg.create_task(pipe(up_reader, writer), name="link-down")
        except (TimeoutError, ExceptionGroup):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            self._tasks.discard(task)


async def test_a_session_the_server_drops_at_once_backs_off_and_is_logged_once(
        sim, running, caplog) -> None:
    # Every session is cut as soon as it is up: this must not become a reconnect storm
    # with a WARNING and an INFO per cycle (and a reconnect as fast as the server answers).
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")
    async with ShortLivedLink(sim, life_s=0.5) as link:
        profile = msgspec.structs.replace(
            sim.client_profile(watchdog_interval_s=0.3, reconnect_min_s=0.05,
                               reconnect_max_s=2.0),
            endpoint_url=link.endpoint_url)
        session = start(running, profile, RecordingSink())
        await eventually(lambda: session.connects >= 4, what="four sessions up and cut")
    ours = [r for r in caplog.records if r.name.startswith("equipment.")]
    warnings = [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
    backs = [r.getMessage() for r in ours if "back:" in r.getMessage()]
    assert len(warnings) == 1 and "ETCH01" in warnings[0] and "lost" in warnings[0], warnings
    assert len(backs) == 1, backs


async def test_sessions_left_on_the_tool_by_link_drops_expire_soon(sim, running) -> None:
    # After a link drop fabd cannot close its session, and the tool keeps it (OPC UA Part 4
    # §6.7), with its subscription sampling every node, for the session timeout: asyncua
    # asked for an hour, so a flaky network filled the tool's session slots.
    sink = RecordingSink()
    session = start(running, sim.client_profile(watchdog_interval_s=0.3, reconnect_min_s=0.1,
                                                reconnect_max_s=0.5, session_timeout_s=5.0), sink)
    for up in (1, 2, 3):
        await eventually(lambda up=up: session.connects == up and
                         session.state is OpcUaSessionState.CONNECTED, what=f"connect {up}")
        if up < 3:
            assert session._client is not None
            session._client._client.disconnect_socket()  # the link drops; the server stays up

    def subscriptions_on_the_tool() -> int:
        return len(sim._server.iserver.subscription_service.subscriptions)

    assert subscriptions_on_the_tool() == 3  # ours, and the two left behind
    await eventually(lambda: subscriptions_on_the_tool() == 1, what="only ours left")
    assert session.state is OpcUaSessionState.CONNECTED
    with pytest.raises(OpcUaConfigError, match=r"^session_timeout_s: .*watchdog_interval_s"):
        sim.client_profile(watchdog_interval_s=2.0, session_timeout_s=3.0)


async def test_a_link_drop_is_one_warning_whoever_logs_it(sim, running, caplog) -> None:
    # fabd runs asyncua's loggers at WARNING: a reconnect must not add asyncua's own lines
    # about closing a session over the dead link to the session's one WARNING.
    caplog.set_level(logging.INFO)
    session = start(running, sim.client_profile(watchdog_interval_s=0.3, reconnect_min_s=0.1,
                                                reconnect_max_s=0.5), RecordingSink())
    await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
    assert session._client is not None
    session._client._client.disconnect_socket()  # the link drops; the server stays up
    await eventually(lambda: session.connects == 2 and
                     session.state is OpcUaSessionState.CONNECTED, what="reconnected")
    loud = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING
            and not r.name.startswith("asyncua.server")]  # the simulated tool's side
    assert len(loud) == 1 and "ETCH01" in loud[0] and "lost" in loud[0], loud


class StuckCoreSink(RecordingSink):
    """A daemon core that takes nothing until `unblock()`: each submit waits on a gate."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = asyncio.Event()

    async def submit(self, events: list) -> None:
        await self._gate.wait()
        await super().submit(events)

    def unblock(self) -> None:
        self._gate.set()


async def test_a_stuck_core_gets_the_tool_resynced_not_its_events_dropped(
        running, caplog, monkeypatch) -> None:
    # The core stops taking events while the tool runs lots: the session's queue fills.
    # OPC UA keeps no spool, so a dropped ProcessStarted/Completed or E10 change left the
    # record wrong for good (a lot "processing" for ever). The session now drops the link
    # (one ERROR) and, once the core has caught up, reconnects: the record learns what the
    # tool runs now and its E10 state.
    monkeypatch.setattr(session_module, "EVENT_QUEUE_SIZE", 8)
    caplog.set_level(logging.INFO, logger="equipment.opcua.session")
    tool = OpcUaToolSim(OpcUaToolSimConfig(tool_id="ETCH08", process_time_s=600,
                                           sample_interval_s=0.05))
    await tool.start()
    try:
        overflows = metrics.EVENT_QUEUE_OVERFLOWS.labels("ETCH08", "opcua")._value.get()
        sink = StuckCoreSink()
        session = start(running, tool.client_profile(watchdog_interval_s=0.3,
                                                     reconnect_min_s=0.1,
                                                     reconnect_max_s=0.5), sink)
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)

        def errors() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

        for i in range(40):  # 4 events a lot (E10 and lot, in and out): a few overflow 8
            if errors():
                break
            await tool.start_lot(f"L{i}", "ETCH-A")
            await eventually(lambda i=i: session.lot_id == f"L{i}" or errors(),
                             what=f"L{i} started")
            await tool.stop_lot()
            await eventually(lambda: session.lot_id == "" or errors(), what="lot ended")
        assert errors(), "the queue never overflowed"
        # While the core is stuck the tool goes on: a new lot, an engineering run.
        await session.wait_state(OpcUaSessionState.NOT_CONNECTED, timeout_s=30)
        await tool.start_lot("L-NOW", "ETCH-B")
        await tool.set_e10(E10State.ENGINEERING)
        assert session.connects == 1  # no reconnect while the core has not caught up

        sink.unblock()

        def resynced() -> bool:
            back = [i for i, e in enumerate(sink.events) if isinstance(e, ToolConnected)][1:]
            return bool(back) and any(isinstance(e, E10StateChanged)
                                      for e in sink.events[back[0]:])

        await eventually(resynced, what="the tool resynced")
        events = sink.events
        (dropped,) = sink.of(ToolDisconnected)
        again = sink.of(ToolConnected)[-1]
        assert dropped.reason == "event queue full"
        between = events[events.index(dropped) + 1:events.index(again)]
        assert all(isinstance(e, ProcessCompleted) for e in between), between
        assert (again.running_lot, again.running_recipe) == ("L-NOW", "ETCH-B")
        assert [e.lot_id for e in sink.of(ProcessStarted)][-1] == "L-NOW"
        assert sink.of(E10StateChanged)[-1].state is E10State.ENGINEERING
        # No lot left "processing" in the record: every lot it saw start but L-NOW ended,
        # and no lot ended that it did not see start.
        started = [e.lot_id for e in sink.of(ProcessStarted)]
        completed = [e.lot_id for e in sink.of(ProcessCompleted)]
        assert set(started) - set(completed) == {"L-NOW"}
        for done in sink.of(ProcessCompleted):
            assert any(isinstance(e, ProcessStarted) and e.lot_id == done.lot_id
                       for e in events[:events.index(done)]), done
        # One ERROR for the overflow, naming the tool and saying what fabd does about it.
        (error,) = errors()
        assert "ETCH08" in error and "resync" in error
        assert metrics.EVENT_QUEUE_OVERFLOWS.labels("ETCH08", "opcua")._value.get() == \
            overflows + 1
        assert session.state is OpcUaSessionState.CONNECTED
    finally:
        await tool.close()
