"""Typed MQTT adapter errors: each subclass says whether to retry, reconfigure or give up."""

from __future__ import annotations

from daemon.errors import FabdError, RetryableError


class MqttAdapterError(FabdError):
    """Root of the MQTT adapter's errors."""


class MqttConfigError(MqttAdapterError, ValueError):
    """The broker or topic mapping config cannot work: fix the config."""


class MqttConnectionError(MqttAdapterError, RetryableError):
    """The broker is unreachable or dropped us: the session retries with backoff."""


class MalformedPayload(MqttAdapterError):
    """A message could not be mapped (bad JSON, missing or non-numeric field): counted, dropped."""
