"""MQTT adapter against a real mosquitto: points, state, malformed payloads, restarts, auth."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiomqtt
import msgspec
import pytest

from equipment import metrics
from equipment.events import (
    E10State,
    E10StateChanged,
    RecordingSink,
    ToolConnected,
    ToolDisconnected,
)
from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
from equipment.mqtt.errors import MqttConfigError
from equipment.mqtt.session import MqttSession, MqttSessionState
from tests.support import MosquittoServer
from tests.support import eventually as _eventually

SENSORS = TopicMapping(
    topic="fab/sensors/{tool_id}/data",
    values={"temp": "chamber_temp_c", "p.mtorr": "pressure_mtorr"},
    lot_field="lot", ts_field="ts", state_field="state",
    state_values={"RUN": E10State.PRODUCTIVE, "IDLE": E10State.STANDBY,
                  "DOWN": E10State.UNSCHEDULED_DOWN},
)
PV = TopicMapping(topic="fab/{tool_id}/pv/{parameter}", qos=1)


def eventually(predicate, timeout_s: float = 30.0, **kw):
    """tests.support.eventually with a deadline that suits a busy shared machine."""
    return _eventually(predicate, timeout_s=timeout_s, **kw)




def broker(server: MosquittoServer, **kw) -> MqttBrokerConfig:
    base = {"broker_id": "plant", "port": server.port, "client_id": "fabd-test",
            "subscriptions": [SENSORS, PV], "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    base.update(kw)
    return MqttBrokerConfig(**base)


class Sessions:
    """Sessions running as named tasks for the length of a test."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []

    def start(self, session: MqttSession) -> MqttSession:
        self.tasks.append(asyncio.create_task(session.run(), name=f"mqtt[{session.broker_id}]"))
        return session

    async def stop(self, session: MqttSession | None = None) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


@pytest.fixture
async def sessions() -> AsyncIterator[Sessions]:
    s = Sessions()
    yield s
    await s.stop()


async def publish(server: MosquittoServer, items: list[tuple[str, bytes | str]], *,
                  username: str | None = None, password: str | None = None,
                  retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", server.port, username=username,
                              password=password) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1, retain=retain)


async def test_json_payloads_become_spc_points_and_tool_state(mosquitto_server, sessions) -> None:
    sink = RecordingSink()
    session = sessions.start(MqttSession(broker(mosquitto_server, client_id="fabd-json"), sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [
        ("fab/sensors/CVD01/data", b'{"temp": 451.5, "p": {"mtorr": 12}, "lot": "L100", '
                                   b'"ts": 1700000000.5, "state": "RUN"}'),
        ("fab/sensors/CVD01/data", b'{"temp": 452.0, "lot": "L100", "ts": 1700000001, '
                                   b'"state": "RUN"}'),
        ("fab/sensors/CVD02/data", b'{"temp": 300, "state": "DOWN", "ts": 1700000002}'),
    ])
    await eventually(lambda: len(sink.point_list) == 4, what="four points")
    assert [(p.tool_id, p.parameter, p.value, p.lot_id, p.ts) for p in sink.point_list] == [
        ("CVD01", "chamber_temp_c", 451.5, "L100", 1700000000.5),
        ("CVD01", "pressure_mtorr", 12.0, "L100", 1700000000.5),
        ("CVD01", "chamber_temp_c", 452.0, "L100", 1700000001.0),
        ("CVD02", "chamber_temp_c", 300.0, "", 1700000002.0),
    ]
    # State changes only (RUN twice is one event); one ToolConnected per tool.
    assert [(e.tool_id, e.state) for e in sink.of(E10StateChanged)] == [
        ("CVD01", E10State.PRODUCTIVE), ("CVD02", E10State.UNSCHEDULED_DOWN)]
    assert [e.tool_id for e in sink.of(ToolConnected)] == ["CVD01", "CVD02"]


async def test_parameter_from_topic_and_the_daemons_current_lot(mosquitto_server,
                                                                 sessions) -> None:
    sink = RecordingSink()
    lots = {"PVD07": "LOT-42"}
    session = sessions.start(MqttSession(broker(mosquitto_server, client_id="fabd-pv"), sink,
                                         current_lot=lambda tool: lots.get(tool, "")))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [("fab/PVD07/pv/target_voltage_v", b"401.25"),
                                     ("fab/PVD07/pv/argon_flow_sccm", b'{"value": 18}')])
    await eventually(lambda: len(sink.point_list) == 2, what="two points")
    assert [(p.tool_id, p.parameter, p.value, p.lot_id) for p in sink.point_list] == [
        ("PVD07", "target_voltage_v", 401.25, "LOT-42"),
        ("PVD07", "argon_flow_sccm", 18.0, "LOT-42")]


async def test_malformed_payloads_are_rejected_counted_and_logged_once_per_topic(
        mosquitto_server, sessions, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="equipment.mqtt.session")
    sink = RecordingSink()
    session = sessions.start(MqttSession(broker(mosquitto_server, client_id="fabd-bad"), sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    before = metrics.MALFORMED.labels("plant", "mqtt")._value.get()
    await publish(mosquitto_server, [
        ("fab/sensors/CVD01/data", b"not json at all"),
        ("fab/sensors/CVD01/data", b'{"temp": "hot"}'),
        ("fab/sensors/CVD01/data", b"[1, 2, 3]"),
        ("fab/sensors/CVD01/data", b'{"state": "EXPLODED"}'),
        ("fab/sensors/CVD01/data", b""),
        ("fab/CVD01/pv/rf_power_w", b'"twelve"'),
        ("fab/CVD01/pv/rf_power_w", b"{}"),
        ("fab/sensors/CVD01/data", b'{"temp": 400.0}'),  # a good one after all that
    ])
    await eventually(lambda: sink.point_list, what="the good message")
    assert [(p.parameter, p.value) for p in sink.point_list] == [("chamber_temp_c", 400.0)]
    assert session.malformed_total == 7
    assert metrics.MALFORMED.labels("plant", "mqtt")._value.get() == before + 7
    warnings = [r.getMessage() for r in caplog.records if r.name == "equipment.mqtt.session"]
    assert len(warnings) == 2  # one per topic per interval
    assert "fab/sensors/CVD01/data" in warnings[0] and "plant" in warnings[0]
    assert session.state is MqttSessionState.CONNECTED


async def test_password_broker_with_password_from_file(mosquitto_with_password, sessions,
                                                       tmp_path) -> None:
    (tmp_path / "pw").write_text("wafer\n")
    sink = RecordingSink()
    session = sessions.start(MqttSession(broker(
        mosquitto_with_password, username="fab", password_file=str(tmp_path / "pw")), sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_with_password, [("fab/ETCH01/pv/bias_v", b"88")],
                  username="fab", password="wafer")
    await eventually(lambda: sink.point_list, what="point through an authenticated broker")
    assert sink.point_list[0].value == 88.0


async def test_wrong_password_keeps_retrying_with_one_warning(mosquitto_with_password, sessions,
                                                              caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="equipment.mqtt.session")
    monkeypatch.setenv("FABD_TEST_MQTT_PW", "not-the-password")
    session = sessions.start(MqttSession(broker(
        mosquitto_with_password, username="fab", password_env="FABD_TEST_MQTT_PW"),
        RecordingSink()))
    await eventually(lambda: session.failed_attempts >= 3, what="three refused attempts")
    assert session.connects == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "equipment.mqtt.session"]
    assert len(lines) == 1 and "not-the-password" not in lines[0]


async def test_broker_restart_is_survived_and_retained_state_republished(own_mosquitto,
                                                                          sessions) -> None:
    sink = RecordingSink()
    session = sessions.start(MqttSession(broker(own_mosquitto, client_id="fabd-restart",
                                                state_topic="fab/state/{tool_id}",
                                                keepalive_s=5), sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(own_mosquitto, [("fab/LITHO3/pv/dose_mj", b"25.5")])
    await eventually(lambda: sink.point_list, what="point before restart")
    assert await session.publish_tool_state("LITHO3", {"e10": "productive", "lot": "L9"})

    await asyncio.to_thread(own_mosquitto.restart)  # persistence off: sessions and retained lost
    await eventually(lambda: session.connects == 2 and
                     session.state is MqttSessionState.CONNECTED, what="reconnected")
    assert [e.tool_id for e in sink.of(ToolDisconnected)] == ["LITHO3"]
    await publish(own_mosquitto, [("fab/LITHO3/pv/dose_mj", b"26.0")])
    await eventually(lambda: len(sink.point_list) == 2, what="point after restart (resubscribed)")

    async with aiomqtt.Client("127.0.0.1", own_mosquitto.port) as dashboard:
        await dashboard.subscribe("fab/state/#", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(dashboard.messages))
    assert message.retain and message.topic.value == "fab/state/LITHO3"
    assert message.payload == b'{"e10":"productive","lot":"L9"}'


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_qos1_data_sent_while_away_arrives_after_restart_of_fabd(mosquitto_server, sessions,
                                                                        protocol) -> None:
    config = broker(mosquitto_server, client_id=f"fabd-persist-{protocol}", protocol=protocol)
    first = sessions.start(MqttSession(config, RecordingSink()))
    await first.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await sessions.stop()  # fabd goes away; the broker keeps its session and subscriptions

    await publish(mosquitto_server, [("fab/IMP01/pv/beam_ma", str(i).encode()) for i in range(5)])
    sink = RecordingSink()
    second = sessions.start(MqttSession(config, sink))
    await second.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: len(sink.point_list) == 5, what="backlog delivered")
    assert [p.value for p in sink.point_list] == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_backlog_samples_belong_to_the_lot_of_their_time(mosquitto_server,
                                                                 sessions) -> None:
    """A sensor's samples kept by the broker while fabd was away were all charted under the
    lot on the tool when they arrived: a lot that ended during the outage lost its data to
    the next one (which an SPC violation would then hold instead)."""
    fdc = TopicMapping(topic="fab/fdc/{tool_id}", ts_field="ts", qos=1)
    config = broker(mosquitto_server, client_id="fabd-lot-at", subscriptions=[fdc])
    first = sessions.start(MqttSession(config, RecordingSink()))
    await first.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await sessions.stop()  # fabd goes away; the broker keeps its session
    now = time.time()
    # LOT-A ran from now-100 to now-50 (while fabd was away), LOT-B since now-20.
    runs = [("LOT-A", now - 100, now - 50), ("LOT-B", now - 20, float("inf"))]

    def lot_at(tool: str, ts: float) -> str:
        return next((lot for lot, start, end in runs if start <= ts <= end), "")

    await publish(mosquitto_server, [
        ("fab/fdc/CVD09", f'{{"rf_w": 1, "ts": {now - 80}}}'),
        ("fab/fdc/CVD09", f'{{"rf_w": 2, "ts": {now - 30}}}'),   # between the lots
        ("fab/fdc/CVD09", f'{{"rf_w": 3, "ts": {now - 10}}}')])
    sink = RecordingSink()
    second = sessions.start(MqttSession(config, sink, current_lot=lambda tool: "LOT-B",
                                        lot_at=lot_at))
    await second.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: len(sink.point_list) == 3, what="backlog delivered")
    await publish(mosquitto_server, [("fab/fdc/CVD09", f'{{"rf_w": 4, "ts": {time.time()}}}')])
    await eventually(lambda: len(sink.point_list) == 4, what="live sample")
    assert [(p.value, p.lot_id) for p in sink.point_list] == [
        (1.0, "LOT-A"), (2.0, ""), (3.0, "LOT-B"), (4.0, "LOT-B")]


class BlockingSink(RecordingSink):
    """An EventSink whose submit() does not return (the events never become durable) until told."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: list = []  # events handed to submit(), durable or not
        self.durable = asyncio.Event()

    async def submit(self, events: list) -> None:
        self.offered.extend(events)
        await self.durable.wait()
        await super().submit(events)

    def of_offered(self, kind: type) -> list:
        """Return the events of one kind handed to submit(), durable or not."""
        return [e for e in self.offered if isinstance(e, kind)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_state_message_not_yet_durable_is_not_acknowledged_and_comes_again(
        mosquitto_server, sessions, protocol) -> None:
    config = broker(mosquitto_server, client_id=f"fabd-unacked-{protocol}", protocol=protocol)
    stuck = BlockingSink()
    first = sessions.start(MqttSession(config, stuck))
    await first.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [
        ("fab/sensors/CVD09/data", b'{"state": "DOWN", "ts": 1700000000}'),
        ("fab/CVD09/pv/rf_power_w", b"250"),  # after the state message: its ack waits in line
    ])
    await eventually(lambda: stuck.point_list and stuck.of_offered(E10StateChanged),
                     what="state change offered to the sink, point mapped")
    await sessions.stop()  # fabd stops (or dies) before the state change is durable

    await publish(mosquitto_server, [("fab/CVD09/pv/rf_power_w", b"251")])  # sent while away
    sink = RecordingSink()
    second = sessions.start(MqttSession(config, sink))
    await second.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: any(p.value == 251.0 for p in sink.point_list),
                     what="the message published while fabd was away")
    # The broker was never told the first two were ours: it sends them again, in order.
    assert [(e.tool_id, e.state) for e in sink.of(E10StateChanged)] == [
        ("CVD09", E10State.UNSCHEDULED_DOWN)]
    assert [p.value for p in sink.point_list] == [250.0, 251.0]


async def test_a_state_message_is_acknowledged_once_durable(mosquitto_server, sessions) -> None:
    config = broker(mosquitto_server, client_id="fabd-acked")
    slow = BlockingSink()
    first = sessions.start(MqttSession(config, slow))
    await first.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [("fab/sensors/CVD10/data", b'{"state": "RUN"}'),
                                     ("fab/CVD10/pv/rf_power_w", b"300")])
    await eventually(lambda: slow.of_offered(E10StateChanged), what="state change offered")
    slow.durable.set()
    await eventually(lambda: slow.of(E10StateChanged), what="state change durable")
    await sessions.stop()

    await publish(mosquitto_server, [("fab/CVD10/pv/rf_power_w", b"301")])
    sink = RecordingSink()
    second = sessions.start(MqttSession(config, sink))
    await second.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await eventually(lambda: sink.point_list, what="the message published while fabd was away")
    assert [p.value for p in sink.point_list] == [301.0]  # the others were acknowledged
    assert sink.of(E10StateChanged) == []


async def test_state_refused_by_a_full_event_queue_comes_again_after_a_reconnect(
        mosquitto_server, sessions, monkeypatch, caplog) -> None:
    monkeypatch.setattr("equipment.mqtt.session.EVENT_QUEUE_SIZE", 1)
    config = broker(mosquitto_server, client_id="fabd-full")
    sink = BlockingSink()
    session = sessions.start(MqttSession(config, sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [(f"fab/sensors/WET{i}/data", b'{"state": "RUN"}')
                                     for i in range(3)])
    await eventually(lambda: "event queue full" in caplog.text, what="an event refused")
    # The session drops the connection to have the unacknowledged messages sent again.
    await eventually(lambda: session.connects + session.failed_attempts >= 2,
                     what="a new connection")
    sink.durable.set()  # the core catches up
    await eventually(lambda: {e.tool_id for e in sink.of(E10StateChanged)} ==
                     {"WET0", "WET1", "WET2"}, what="every tool's state, refused ones re-sent")


def test_bad_topic_mappings_fail_with_their_key() -> None:
    with pytest.raises(MqttConfigError, match=r"topic: .*whole level"):
        TopicMapping(topic="fab/x{tool_id}/d")
    with pytest.raises(MqttConfigError, match=r"name the tool"):
        TopicMapping(topic="fab/+/d")
    with pytest.raises(MqttConfigError, match="state_topic"):
        MqttBrokerConfig(state_topic="fab/state")
    with pytest.raises(msgspec.ValidationError, match=r"qos"):
        msgspec.convert({"topic": "fab/{tool_id}/d", "qos": 2}, TopicMapping)  # see config
    raw = {"broker_id": "plant", "subscriptions": [{"topic": "fab/{tool_id}/a/{tool_id}"}]}
    with pytest.raises(msgspec.ValidationError, match=r"appears twice"):
        msgspec.convert(raw, MqttBrokerConfig)


async def test_a_retained_reading_is_not_charted_again_at_every_reconnect(mosquitto_server,
                                                                          sessions) -> None:
    # A tool that publishes its readings retained: the broker sends the retained copy again at
    # every SUBSCRIBE, i.e. at every reconnect. It is the same reading, not a new one.
    sink = RecordingSink()
    config = broker(mosquitto_server, client_id="fabd-retained")
    session = sessions.start(MqttSession(config, sink))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await publish(mosquitto_server, [("fab/RTP01/pv/lamp_temp_c", b"1050")], retain=True)
    await eventually(lambda: sink.point_list, what="the reading")
    # Another client with our id takes the session over: the broker drops fabd's connection.
    async with aiomqtt.Client("127.0.0.1", mosquitto_server.port, identifier="fabd-retained",
                              clean_session=False):
        await eventually(lambda: session.state is not MqttSessionState.CONNECTED,
                         what="fabd dropped")
    await eventually(lambda: session.connects == 2 and
                     session.state is MqttSessionState.CONNECTED, what="reconnected")
    await publish(mosquitto_server, [("fab/RTP01/pv/lamp_temp_c", b"1051")])
    await eventually(lambda: any(p.value == 1051.0 for p in sink.point_list), what="new reading")
    assert [p.value for p in sink.point_list] == [1050.0, 1051.0]
    await publish(mosquitto_server, [("fab/RTP01/pv/lamp_temp_c", b"")], retain=True)  # clear


async def test_a_broker_that_refuses_us_after_an_outage_is_reported(mosquitto_with_password,
                                                                    sessions, caplog,
                                                                    tmp_path) -> None:
    # The broker comes back from a restart with the password changed: fabd will never get
    # in until someone fixes the credentials, and must say so, not only "connection lost".
    caplog.set_level(logging.INFO, logger="equipment.mqtt.session")
    (tmp_path / "pw").write_text("wafer\n")
    session = sessions.start(MqttSession(broker(
        mosquitto_with_password, client_id="fabd-rotated", username="fab",
        password_file=str(tmp_path / "pw")), RecordingSink()))
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    mosquitto_with_password.password = "rotated"
    await asyncio.to_thread(mosquitto_with_password.restart)
    seen = session.failed_attempts
    await eventually(lambda: session.failed_attempts >= seen + 3, what="refused attempts")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "plant" in errors[0] and "wafer" not in errors[0]


async def test_a_connection_that_keeps_dropping_backs_off_and_is_logged_once(
        mosquitto_server, sessions, caplog) -> None:
    # Two fabd with the same client id (a standby started by mistake) take the session from
    # each other as soon as each connects: this must not become a reconnect storm with a
    # WARNING per cycle.
    caplog.set_level(logging.INFO, logger="equipment.mqtt.session")
    config = broker(mosquitto_server, client_id="fabd-twin", reconnect_min_s=0.05,
                    reconnect_max_s=2.0, subscribe_timeout_s=1.0)
    a = sessions.start(MqttSession(config, RecordingSink(), seed=1))
    b = sessions.start(MqttSession(msgspec.structs.replace(config, broker_id="twin"),
                                   RecordingSink(), seed=2))
    await eventually(lambda: a.connects + b.connects >= 1, what="one of them up")
    await asyncio.sleep(4.0)  # a rate over a window: the storm would show here
    cycles = a.connects + b.connects
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert cycles < 30, f"{cycles} connects in 4 s: no backoff"
    assert len(lines) <= 4, lines


def kill_broker_while_subscribing(server: MosquittoServer, monkeypatch,
                                  before=lambda: True) -> asyncio.Event:
    """Kill the broker as fabd's first SUBSCRIBE goes out (once `before()` holds); set when done."""
    from equipment.mqtt import session as session_module

    killed = asyncio.Event()
    real_build_client = session_module.build_client

    def build_client(config, **kw):
        client = real_build_client(config, **kw)
        real_subscribe = client.subscribe

        async def subscribe(*args, **kwargs):
            if not killed.is_set():
                await eventually(before, what="the moment to kill the broker")
                server.proc.kill()
                server.proc.wait()
                server.proc = None
                killed.set()
            return await real_subscribe(*args, **kwargs)

        client.subscribe = subscribe
        return client

    monkeypatch.setattr(session_module, "build_client", build_client)
    return killed


async def test_a_broker_lost_while_we_subscribe_is_noticed_at_once(own_mosquitto, sessions,
                                                                   monkeypatch, caplog) -> None:
    # The broker restarts while fabd subscribes (after an outage it sends the whole QoS 1
    # backlog before the SUBACKs, so that window is long): fabd must reconnect as soon as
    # the broker is back, not wait out subscribe_timeout_s (default 2 minutes) for a SUBACK
    # that cannot come.
    caplog.set_level(logging.INFO, logger="equipment.mqtt.session")
    killed = kill_broker_while_subscribing(own_mosquitto, monkeypatch)
    sink = RecordingSink()
    session = sessions.start(MqttSession(broker(own_mosquitto, client_id="fabd-subkill",
                                                subscribe_timeout_s=120.0), sink))
    await asyncio.wait_for(killed.wait(), 30)
    await asyncio.to_thread(own_mosquitto.start)
    await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)  # not 120 s
    await publish(own_mosquitto, [("fab/LITHO4/pv/dose_mj", b"25.5")])
    await eventually(lambda: sink.point_list, what="a point after the reconnect")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "timed out" not in warnings[0], warnings


async def test_a_tool_heard_from_before_a_connection_fails_is_reported_down(own_mosquitto,
                                                                          sessions,
                                                                          monkeypatch) -> None:
    # The backlog of a persistent session comes right after the CONNACK, before the
    # SUBACKs: its tools are announced (ToolConnected). If the broker then goes away before
    # the session is up, those tools must be reported down, not shown connected all outage.
    config = broker(own_mosquitto, client_id="fabd-backlog-kill")
    first = sessions.start(MqttSession(config, RecordingSink()))
    await first.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
    await sessions.stop()  # fabd goes away; the broker keeps its session and subscriptions
    await publish(own_mosquitto, [("fab/ETCH09/pv/rf_power_w", b"250")])

    sink = RecordingSink()
    killed = kill_broker_while_subscribing(own_mosquitto, monkeypatch,
                                           before=lambda: sink.of(ToolConnected))
    second = sessions.start(MqttSession(config, sink))
    await asyncio.wait_for(killed.wait(), 30)
    await eventually(lambda: second.failed_attempts, what="the attempt failed")
    assert [e.tool_id for e in sink.of(ToolConnected)] == ["ETCH09"]
    await eventually(lambda: sink.of(ToolDisconnected), what="ETCH09 reported down")
    assert [e.tool_id for e in sink.of(ToolDisconnected)] == ["ETCH09"]
