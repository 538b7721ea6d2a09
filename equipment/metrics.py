"""Per-tool metrics every adapter (HSMS/GEM, OPC UA, MQTT) shares, so dashboards see one shape.

Labels: `tool` (tool id) and `protocol` ("hsms", "opcua", "mqtt"). Never lot or wafer ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTED = Gauge(
    "fabd_equipment_connected", "1 while the tool's session is up (HSMS: SELECTED)",
    ["tool", "protocol"])
MESSAGES_RECEIVED = Counter(
    "fabd_equipment_messages_received_total", "Messages received from the tool",
    ["tool", "protocol"])
MESSAGES_SENT = Counter(
    "fabd_equipment_messages_sent_total", "Messages sent to the tool", ["tool", "protocol"])
RECONNECTS = Counter(
    "fabd_equipment_reconnects_total", "Connections re-established after a loss",
    ["tool", "protocol"])
REPLY_TIMEOUTS = Counter(
    "fabd_equipment_reply_timeouts_total", "Requests the tool did not answer in time (HSMS T3)",
    ["tool", "protocol"])
MALFORMED = Counter(
    "fabd_equipment_malformed_total",
    "Malformed messages or payloads received and rejected (HSMS: answered with S9Fx)",
    ["tool", "protocol"])
EVENT_QUEUE_OVERFLOWS = Counter(
    "fabd_equipment_event_queue_overflows_total",
    "Times the tool's event queue was full because the daemon core fell behind "
    "(OPC UA: the session is dropped and the tool resynced once the core catches up)",
    ["tool", "protocol"])
