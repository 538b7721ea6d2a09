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
import ssl
from pathlib import Path
from typing import Literal

import msgspec

from equipment.events import E10State
from equipment.mqtt.errors import MqttConfigError

PLACEHOLDERS = ("{tool_id}", "{parameter}")


def _raise_first(problems: list[tuple[str, str]]) -> None:
    # "key: reason" is what daemon.config maps back to the key path of the config file.
    if problems:
        key, reason = problems[0]
        raise MqttConfigError(f"{key}: {reason}")


class TopicMapping(msgspec.Struct, frozen=True, kw_only=True):
    """One subscription and how its messages become SPC points and tool state."""

    topic: str  # MQTT filter, with {tool_id} / {parameter} placeholders for one level each
    # 1: the broker keeps the data for us while we reconnect, and re-sends what fabd did not
    # acknowledge (acked once durable). No 2: its receiver takes the message over (PUBREC)
    # before fabd sees it, so QoS 1 with the ack after durability is the stronger guarantee.
    qos: Literal[0, 1] = 1
    tool_id: str = ""  # a fixed tool id, when neither the topic nor the payload names one
    tool_field: str = ""  # payload field holding the tool id
    values: dict[str, str] = {}  # payload field -> SPC parameter; {} = every numeric field
    lot_field: str = ""  # payload field with the lot id ("" = the daemon's lot on the tool then)
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

    def __post_init__(self) -> None:
        _raise_first(self.problems())

    def problems(self) -> list[tuple[str, str]]:
        """Return (key, reason) for everything in this mapping that cannot work."""
        out: list[tuple[str, str]] = []
        levels = self.topic.split("/")
        if not self.topic:
            out.append(("topic", "required"))
        elif any(("{" in lv or "}" in lv) and lv not in PLACEHOLDERS for lv in levels):
            out.append(("topic", f"{self.topic!r}: a placeholder must fill a whole level "
                                 "({tool_id} or {parameter})"))
        for p in PLACEHOLDERS:
            if levels.count(p) > 1:
                out.append(("topic", f"{p} appears twice"))
        if "#" in levels[:-1]:
            out.append(("topic", "'#' must be the last level"))
        if self.topic and not (self.tool_id or self.tool_field or "{tool_id}" in levels):
            out.append(("tool_id", "name the tool: tool_id, tool_field or {tool_id} in the "
                                   "topic"))
        return out


class MqttTls(msgspec.Struct, frozen=True, kw_only=True):
    """TLS towards the broker."""

    ca_file: str = ""  # CA bundle that signed the broker's certificate ("" = system CAs)
    client_cert_file: str = ""  # client certificate (PEM), for brokers that require one
    client_key_file: str = ""
    check_hostname: bool = True

    def __post_init__(self) -> None:
        problems = [(key, f"no such file: {getattr(self, key)}") for key in
                    ("ca_file", "client_cert_file", "client_key_file")
                    if getattr(self, key) and not Path(getattr(self, key)).is_file()]
        if bool(self.client_cert_file) != bool(self.client_key_file):
            problems.append(("client_key_file", "client_cert_file and client_key_file go "
                                                "together"))
        if not problems:
            problems += self._unloadable()
        _raise_first(problems)

    def _unloadable(self) -> list[tuple[str, str]]:
        # Load the files as build_client() will, so a file that exists but is not what it
        # should be fails here, naming its key, and not at the first connect.
        out: list[tuple[str, str]] = []
        if self.ca_file:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                out.append(("ca_file", f"cannot load CA certificates from {self.ca_file}: "
                                       f"{exc}"))
        if self.client_cert_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                # An encrypted key gets an empty pass phrase, never a prompt on the terminal.
                ctx.load_cert_chain(self.client_cert_file, self.client_key_file,
                                    password=lambda: b"")
            except (ssl.SSLError, OSError, ValueError) as exc:
                out.append(("client_cert_file", f"cannot load {self.client_cert_file} with "
                                                f"the key {self.client_key_file} (PEM, "
                                                f"unencrypted, matching): {exc}"))
        return out


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

    def __post_init__(self) -> None:
        _raise_first(self.problems())

    def validate(self) -> None:
        """Raise MqttConfigError naming the first bad key (as construction does)."""
        _raise_first(self.problems())

    def problems(self) -> list[tuple[str, str]]:
        """Return (key path, reason) for everything in this broker block that cannot work."""
        out: list[tuple[str, str]] = []
        if not (0 < self.port < 65536):
            out.append(("port", f"{self.port} out of range"))
        if not (0 <= self.keepalive_s <= 65_535):  # MQTT: a two-byte field, 0 = off
            out.append(("keepalive_s", f"{self.keepalive_s} out of range 0..65535"))
        if self.protocol == "5" and not (0 <= self.session_expiry_s <= 0xFFFF_FFFF):
            out.append(("session_expiry_s", f"{self.session_expiry_s} out of range "
                                            "0..4294967295"))
        if not self.client_id and not self.clean_session:
            out.append(("client_id", "a persistent session (clean_session false) needs a "
                                     "stable client id"))
        if self.username and not (self.password_file or self.password_env):
            out.append(("username", "set password_file or password_env as well"))
        if self.password_file and not Path(self.password_file).is_file():
            out.append(("password_file", f"no such file: {self.password_file}"))
        if self.password_env and self.password_env not in os.environ:
            out.append(("password_env", f"environment variable {self.password_env} is not set"))
        if self.state_topic and "{tool_id}" not in self.state_topic:
            out.append(("state_topic", "must contain {tool_id}"))
        for i, sub in enumerate(self.subscriptions):
            out += [(f"subscriptions[{i}].{k}", r) for k, r in sub.problems()]
        if not (0 < self.reconnect_min_s <= self.reconnect_max_s):
            out.append(("reconnect_min_s", "need 0 < reconnect_min_s <= reconnect_max_s"))
        for key in ("request_timeout_s", "subscribe_timeout_s", "malformed_log_interval_s"):
            if getattr(self, key) <= 0:
                out.append((key, "must be > 0"))
        return out

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
