"""The MQTT mapping on its own: any payload on any topic is either mapped or counted, never a crash."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from equipment.events import E10State, E10StateChanged, RecordingSink
from equipment.mqtt.client import TopicRouter
from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
from equipment.mqtt.session import MqttSession

MAPPINGS = [
    TopicMapping(topic="fab/sensors/{tool_id}/data", values={"temp": "temp_c", "p.mtorr": "p"},
                 lot_field="lot", ts_field="ts", state_field="state"),
    TopicMapping(topic="fab/{tool_id}/pv/{parameter}"),
    TopicMapping(topic="plant/+/all", tool_field="tool"),
    TopicMapping(topic="line3/#", tool_id="LINE3"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["temp", "p", "mtorr", "lot", "ts", "state", "tool", "value", "x"]),
        inner, max_size=5),
    max_leaves=12)
payloads = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())
topics = st.sampled_from(["fab/sensors/T1/data", "fab/T2/pv/rf", "plant/a/all", "line3/x/y",
                          "fab/sensors//data", "other/topic", "fab/T2/pv/"])


def _run(session: MqttSession, items: list[tuple[str, bytes]]) -> list:
    async def go() -> list:
        events = []
        for topic, payload in items:
            events += session.handle(topic, payload)
        await asyncio.sleep(0)  # let the batched sink.points() run
        return events

    return asyncio.run(go())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(topics, payloads), min_size=1, max_size=10))
def test_any_message_is_mapped_or_counted_never_raises(items) -> None:
    sink = RecordingSink()
    session = MqttSession(MqttBrokerConfig(subscriptions=MAPPINGS), sink)
    _run(session, items)
    assert session.received_total == len(items)
    assert session.malformed_total <= len(items)
    for p in sink.point_list:
        assert p.tool_id and isinstance(p.tool_id, str) and isinstance(p.value, float)
        assert isinstance(p.lot_id, str) and "{" not in p.tool_id + p.lot_id


def test_topic_router_captures_and_wildcards() -> None:
    router = TopicRouter(MAPPINGS)
    r = router.route("fab/sensors/ETCH9/data")
    assert (r.tool_id, r.parameter) == ("ETCH9", "")
    r = router.route("fab/ETCH9/pv/rf_power_w")
    assert (r.tool_id, r.parameter) == ("ETCH9", "rf_power_w")
    assert router.route("line3/a/b/c").tool_id == "LINE3"
    assert router.route("fab/sensors//data") is None  # an empty tool id level is not a tool
    assert router.route("fab/sensors/ETCH9") is None
    assert [m.filter() for m in MAPPINGS] == ["fab/sensors/+/data", "fab/+/pv/+", "plant/+/all",
                                              "line3/#"]


def test_state_names_map_without_a_table_and_every_numeric_field_is_a_point() -> None:
    sink = RecordingSink()
    session = MqttSession(MqttBrokerConfig(subscriptions=[
        TopicMapping(topic="fab/{tool_id}", state_field="state", lot_field="lot")]), sink)
    events = _run(session, [("fab/WET1", b'{"state": "Standby", "lot": "L1", "ph": 7, '
                                         b'"ok": true, "name": "x", "cond_us": 1.5}')])
    assert [(e.tool_id, e.state) for e in events if isinstance(e, E10StateChanged)] == [
        ("WET1", E10State.STANDBY)]
    assert sorted((p.parameter, p.value, p.lot_id) for p in sink.point_list) == [
        ("cond_us", 1.5, "L1"), ("ph", 7.0, "L1")]
