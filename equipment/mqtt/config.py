"""MQTT broker connection and the mapping from topics and JSON fields to tools and charts.

A topic mapping names the tool and, optionally, the parameter with placeholders
in the topic: `fab/sensors/{tool_id}/data` subscribes `fab/sensors/+/data` and
takes the tool id from the third level; `fab/{tool_id}/pv/{parameter}` also
takes the parameter name from the topic (the payload is then a bare number or
an object with a `value` field). Payload fields are JSON paths with dots
(`data.temp`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from equipment.events import E10State
from equipment.mqtt.errors import MqttConfigError

PLACEHOLDERS = ("{tool_id}", "{parameter}")


class TopicMapping(msgspec.Struct, frozen=True, kw_only=True):
    """One subscription and how its messages become SPC points and tool state."""

    topic: str  # MQTT filter, with {tool_id} / {parameter} placeholders for one level each
    qos: Literal[0, 1, 2] = 1  # 1: the broker keeps the data for us while we reconnect
    tool_id: str = ""  # a fixed tool id, when neither the topic nor the payload names one
    tool_field: str = ""  # payload field holding the tool id
    values: dict[str, str] = {}  # payload field -> SPC parameter; {} = every numeric field
    lot_field: str = ""  # payload field with the lot id ("" = ask the daemon's current lot)
    chamber_field: str = ""
    ts_field: str = ""  # payload field with the sample time in epoch seconds ("" = arrival)
    state_field: str = ""  # payload field with the tool state -> E10StateChanged
    state_values: dict[str, E10State] = {}  # payload state -> E10; {} = E10 state names

    def filter(self) -> str:
        """Return the MQTT subscription filter (placeholders become `+`)."""
        out = self.topic
        for p in PLACEHOLDERS:
            out = out.replace(p, "+")
        return out

    def validate(self, where: str) -> None:
        """Raise MqttConfigError naming the bad key."""
        levels = self.topic.split("/")
        if not self.topic or any(("{" in lv or "}" in lv) and lv not in PLACEHOLDERS
                                 for lv in levels):
            raise MqttConfigError(f"{where}.topic: {self.topic!r}: a placeholder must fill a "
                                  "whole level ({tool_id} or {parameter})")
        for p in PLACEHOLDERS:
            if levels.count(p) > 1:
                raise MqttConfigError(f"{where}.topic: {p} appears twice")
        if "#" in levels[:-1]:
            raise MqttConfigError(f"{where}.topic: '#' must be the last level")
        if not (self.tool_id or self.tool_field or "{tool_id}" in levels):
            raise MqttConfigError(f"{where}: name the tool: tool_id, tool_field or "
                                  "{tool_id} in the topic")


class MqttTls(msgspec.Struct, frozen=True, kw_only=True):
    """TLS towards the broker."""

    ca_file: str = ""  # CA bundle that signed the broker's certificate ("" = system CAs)
    client_cert_file: str = ""  # client certificate (PEM), for brokers that require one
    client_key_file: str = ""
    check_hostname: bool = True


class MqttBrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One broker: connection, identity, subscriptions, retained tool-state publishing."""

    broker_id: str = "mqtt"  # the name in logs and in metrics' `tool` label for the connection
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "fabd"  # stable, so the broker keeps our session and QoS 1 backlog
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    clean_session: bool = False  # False: persistent session (data sent while we were away)
    session_expiry_s: int = 86_400  # MQTT 5: how long the broker keeps the session
    keepalive_s: int = 30
    request_timeout_s: float = 10.0  # CONNACK, PUBACK for our publishes, UNSUBACK
    # After an outage the broker sends the whole QoS 1 backlog before the SUBACK: allow for it.
    subscribe_timeout_s: float = 120.0
    username: str = ""
    password_file: str = ""  # the password is read from this file (first line) ...
    password_env: str = ""  # ... or this environment variable; never from the config itself
    tls: MqttTls | None = None
    subscriptions: list[TopicMapping] = []
    state_topic: str = ""  # e.g. "fab/state/{tool_id}": publish_tool_state() target, retained
    state_qos: Literal[0, 1, 2] = 1
    malformed_log_interval_s: float = 60.0  # at most one warning per topic per interval
    max_queued_messages: int = 100_000  # incoming backlog bound (dropped messages are counted)
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def validate(self, where: str = "mqtt") -> None:
        """Raise MqttConfigError naming the first bad key."""
        where = f"{where}[{self.broker_id}]"
        if not (0 < self.port < 65536):
            raise MqttConfigError(f"{where}.port: {self.port} out of range")
        if not self.client_id and not self.clean_session:
            raise MqttConfigError(f"{where}.client_id: a persistent session needs a stable id")
        if self.username and not (self.password_file or self.password_env):
            raise MqttConfigError(f"{where}: username set but neither password_file nor "
                                  "password_env")
        if self.password_file and not Path(self.password_file).is_file():
            raise MqttConfigError(f"{where}.password_file: no such file")
        if self.tls is not None:
            for key in ("ca_file", "client_cert_file", "client_key_file"):
                path = getattr(self.tls, key)
                if path and not Path(path).is_file():
                    raise MqttConfigError(f"{where}.tls.{key}: no such file {path!r}")
            if bool(self.tls.client_cert_file) != bool(self.tls.client_key_file):
                raise MqttConfigError(f"{where}.tls: client_cert_file and client_key_file "
                                      "go together")
        if self.state_topic and "{tool_id}" not in self.state_topic:
            raise MqttConfigError(f"{where}.state_topic: must contain {{tool_id}}")
        for i, sub in enumerate(self.subscriptions):
            sub.validate(f"{where}.subscriptions[{i}]")
        if not (0 < self.reconnect_min_s <= self.reconnect_max_s):
            raise MqttConfigError(f"{where}.reconnect_min_s: need 0 < min <= reconnect_max_s")

    def password(self) -> str | None:
        """Read the password from its file or environment variable (never logged)."""
        if self.password_file:
            lines = Path(self.password_file).read_text().splitlines()
            return lines[0] if lines else ""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise MqttConfigError(f"mqtt[{self.broker_id}].password_env: "
                                      f"{self.password_env} is not set")
            return value
        return None
