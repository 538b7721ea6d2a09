"""The MQTT client layer: an aiomqtt client built from config, and topic routing.

`build_client()` applies identity, TLS and the persistent-session settings;
`paho_client()` reaches the paho client underneath (for manual acknowledgement);
`TopicRouter` finds the mapping a received topic belongs to and what its
placeholders captured (cached per topic, so the hot path is one dict lookup).
Reconnecting is the session's job (`equipment.mqtt.session`).
"""

from __future__ import annotations

import ssl
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
from equipment.mqtt.errors import MqttAdapterError


def build_client(config: MqttBrokerConfig, **extra: Any) -> aiomqtt.Client:
    """Return an (unconnected) aiomqtt client for the broker; call inside the event loop."""
    kwargs: dict[str, Any] = {
        "identifier": config.client_id or None,
        "keepalive": config.keepalive_s,
        "max_queued_incoming_messages": config.max_queued_messages,
        "timeout": config.request_timeout_s,
    }
    if config.username:
        kwargs["username"] = config.username
        kwargs["password"] = config.password()
    if config.protocol == "5":
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
        # MQTT 5: keep the session across reconnects for session_expiry_s (clean start only
        # when asked); the broker then holds QoS 1 messages while we are away.
        kwargs["clean_start"] = config.clean_session
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if config.clean_session else config.session_expiry_s
        kwargs["properties"] = props
    else:
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
        kwargs["clean_session"] = config.clean_session
    if config.tls is not None:
        t = config.tls
        ctx = ssl.create_default_context(cafile=t.ca_file or None)
        if t.client_cert_file:
            ctx.load_cert_chain(t.client_cert_file, t.client_key_file)
        ctx.check_hostname = t.check_hostname
        kwargs["tls_context"] = ctx
    kwargs.update(extra)
    return aiomqtt.Client(config.host, config.port, **kwargs)


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """Return the paho client an aiomqtt client wraps, for what aiomqtt does not expose."""
    # aiomqtt 2.5 has no manual-ack option and no public way to the paho client it wraps;
    # paho 2.x has both (manual_ack_set, ack). The one private step is aiomqtt's `_client`
    # attribute (so named since asyncio-mqtt); we check its type and the two methods here,
    # before connecting, so an aiomqtt that changes it stops the session at its first
    # connect with this message instead of quietly acknowledging messages early.
    inner = getattr(client, "_client", None)
    if not (isinstance(inner, paho.Client) and callable(getattr(inner, "manual_ack_set", None))
            and callable(getattr(inner, "ack", None))):
        raise MqttAdapterError(
            f"aiomqtt {getattr(aiomqtt, '__version__', '?')}: no paho client with manual "
            "acknowledgement found under aiomqtt.Client._client; fabd needs it to acknowledge "
            "QoS 1 messages only once their events are durable (use aiomqtt 2.x, paho-mqtt 2.x)")
    return inner


class Route:
    """What a topic resolved to: its mapping and the captured tool id / parameter."""

    __slots__ = ("mapping", "parameter", "tool_id")

    def __init__(self, mapping: TopicMapping, tool_id: str, parameter: str) -> None:
        self.mapping = mapping
        self.tool_id = tool_id
        self.parameter = parameter


class TopicRouter:
    """Match received topics against the configured mappings (first match wins)."""

    MAX_CACHED = 100_000

    def __init__(self, mappings: list[TopicMapping]) -> None:
        self._patterns = [(m, m.topic.split("/")) for m in mappings]
        self._cache: dict[str, Route | None] = {}

    def route(self, topic: str) -> Route | None:
        """Return the route of a topic, or None when no mapping matches it."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        route = self._match(topic)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[topic] = route
        return route

    def _match(self, topic: str) -> Route | None:
        levels = topic.split("/")
        for mapping, pattern in self._patterns:
            captured = {"{tool_id}": mapping.tool_id, "{parameter}": ""}
            if _matches(pattern, levels, captured):
                return Route(mapping, captured["{tool_id}"], captured["{parameter}"])
        return None


def _matches(pattern: list[str], levels: list[str], captured: dict[str, str]) -> bool:
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(levels):
            return False
        if p in captured:
            if not levels[i]:
                return False
            captured[p] = levels[i]
        elif p != "+" and p != levels[i]:
            return False
    return len(levels) == len(pattern)
