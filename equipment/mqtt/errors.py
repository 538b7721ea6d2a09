"""Typed MQTT adapter errors: each subclass says whether to retry, reconfigure or give up."""

from __future__ import annotations


class MqttAdapterError(Exception):
    """Root of the MQTT adapter's errors (re-root on the shared FabdError when it lands)."""


class MqttConfigError(MqttAdapterError, ValueError):
    """The broker or topic mapping config cannot work: fix the config."""


class MqttConnectionError(MqttAdapterError, ConnectionError):
    """The broker is unreachable or dropped us: the session retries with backoff."""


class MalformedPayload(MqttAdapterError):
    """A message could not be mapped (bad JSON, missing or non-numeric field): counted, dropped."""
